"""Geometry primitives of the abdominal phantom: a canvas in mm and signed-distance-like fields.

Every shape is an implicit field `f` in mm (negative inside, ~signed distance near the surface),
evaluated on the bounding box of the shape only. Organs are cut from their field by
`select_volume`, which picks the exact number of voxels that gives the wanted volume, so organ
volumes are controlled exactly whatever the grid. Conventions (DESIGN.md section 2): arrays are
(X, Y, Z) in RAS+, world x grows toward the patient's right, y anterior, z superior; the volume
is centred at world (0, 0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shared.io.nifti import centred_affine

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class PhantomGrid:
    """Voxel grid of a phantom: `shape` (X, Y, Z) voxels and `spacing` in mm, centred at world 0."""

    shape: tuple[int, int, int] = (128, 128, 80)
    spacing: tuple[float, float, float] = (3.0, 3.0, 5.0)

    def affine(self) -> np.ndarray:
        """(4, 4) float64 RAS+ voxel -> world (mm); diagonal = spacing; volume centred at 0."""
        return centred_affine(self.shape, self.spacing)

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (mm) of the voxel centres along X, Y and Z (three 1-D float32 arrays)."""
        return tuple(  # type: ignore[return-value]
            ((np.arange(n) - 0.5 * (n - 1)) * s).astype(np.float32)
            for n, s in zip(self.shape, self.spacing, strict=True)
        )

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


class Canvas:
    """A grid plus the tissue map being painted; hands out boxes and their coordinates."""

    def __init__(self, grid: PhantomGrid, fill: int = 0) -> None:
        self.grid = grid
        self.axes = grid.axes_mm()
        self.tissue = np.full(grid.shape, fill, dtype=np.uint8)  # (X, Y, Z) tissue ids

    def box(self, lo: np.ndarray, hi: np.ndarray) -> Box | None:
        """Index box covering the world-mm box [lo, hi] (3-vectors), clipped; None if empty."""
        out = []
        for ax, a, b in zip(self.axes, lo, hi, strict=True):
            i0 = int(np.searchsorted(ax, a, side="left"))
            i1 = int(np.searchsorted(ax, b, side="right"))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates (mm) of a box: x (n,1,1), y (1,n,1), z (1,1,n)."""
        x, y, z = (ax[s] for ax, s in zip(self.axes, box, strict=True))
        return x[:, None, None], y[None, :, None], z[None, None, :]

    def full_box(self) -> Box:
        return tuple(slice(0, n) for n in self.grid.shape)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Rotations and fields
# ---------------------------------------------------------------------------------------------
def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation Rz(yaw) @ Ry(pitch) @ Rx(roll), angles in radians; columns = local axes."""
    cz, sz, cy, sy, cx, sx = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                              np.cos(roll), np.sin(roll))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def local_coords(xyz: tuple[np.ndarray, ...], centre: np.ndarray, rot: np.ndarray | None):
    """Coordinates of the box points in a local frame (origin `centre`, axes = columns of rot)."""
    d = [c - np.float32(m) for c, m in zip(xyz, centre, strict=True)]
    if rot is None:
        return d
    r = rot.astype(np.float32)
    return [d[0] * r[0, k] + d[1] * r[1, k] + d[2] * r[2, k] for k in range(3)]


def ellipsoid_field(xyz, centre, radii, rot: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid: (|q / radii| - 1) * mean radius."""
    q = local_coords(xyz, centre, rot)
    rr = np.sqrt(sum((qk / np.float32(r)) ** 2 for qk, r in zip(q, radii, strict=True)))
    return (rr - 1.0) * np.float32(np.mean(radii))


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two fields (mm); `k` = blend width in mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def random_waves(rng: np.random.Generator, n: int, amp_mm: float,
                 wavelength_mm: tuple[float, float] = (70.0, 180.0)) -> np.ndarray:
    """Parameters (n, 5) of a smooth random deformation: direction*2pi/lambda (3), phase, amp."""
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength_mm, size=(n, 1))
    return np.hstack([u * k, rng.uniform(0, 2 * np.pi, (n, 1)),
                      rng.uniform(0.5, 1.0, (n, 1)) * amp_mm / np.sqrt(n)])


def wave_field(xyz, waves: np.ndarray) -> np.ndarray:
    """Smooth deformation (mm) = sum_k amp_k sin(w_k . p + phase_k) over the box."""
    out = np.float32(0.0)
    for wx, wy, wz, ph, amp in waves.astype(np.float32):
        out = out + amp * np.sin(xyz[0] * wx + xyz[1] * wy + xyz[2] * wz + ph)
    return out


# ---------------------------------------------------------------------------------------------
# Tubes along polylines
# ---------------------------------------------------------------------------------------------
def catmull_rom(ctrl: np.ndarray, step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Smooth curve through control points (N, D), resampled every ~step_mm of arclength.

    Returns (points (M, D), param (M,)) where param is the control-point index coordinate
    (param == i at control point i), so attributes given per control point can be interpolated.
    """
    p = np.vstack([2 * ctrl[0] - ctrl[1], ctrl, 2 * ctrl[-1] - ctrl[-2]])
    t = np.linspace(0, 1, 24, endpoint=False)[:, None]
    pieces = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        pieces.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                             + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    fine = np.vstack([*pieces, ctrl[-1:]])
    fine_param = np.concatenate([np.arange(len(ctrl) - 1).repeat(24) + np.tile(t[:, 0], len(ctrl) - 1),
                                 [len(ctrl) - 1]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(fine, axis=0), axis=1))])
    s = np.linspace(0, arc[-1], max(2, int(np.ceil(arc[-1] / step_mm)) + 1))
    pts = np.stack([np.interp(s, arc, fine[:, d]) for d in range(fine.shape[1])], axis=1)
    return pts, np.interp(s, arc, fine_param)


def arclength(points: np.ndarray) -> np.ndarray:
    """Cumulative arclength (mm) at each point of a polyline (N, 3)."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


@dataclass
class TubeField:
    """A tube evaluated on a box: sd (mm, <0 inside), nearest segment index and its parameter t."""

    box: Box
    sd: np.ndarray  # (bx, by, bz) float32
    seg: np.ndarray  # (bx, by, bz) int32, index of the nearest polyline segment
    t: np.ndarray  # (bx, by, bz) float32 in [0, 1] along that segment

    def arclength(self, points: np.ndarray) -> np.ndarray:
        """Arclength (mm) of the nearest centreline point, per voxel of the box."""
        s = arclength(points)
        seg_len = np.diff(s)
        return (s[:-1][self.seg] + self.t * seg_len[self.seg]).astype(np.float32)

    def centre(self, points: np.ndarray, axis: int) -> np.ndarray:
        """World coordinate `axis` (mm) of the nearest centreline point, per voxel."""
        a = points[:-1, axis][self.seg]
        return (a + self.t * (points[1:, axis] - points[:-1, axis])[self.seg]).astype(np.float32)


def _segment_sd(xyz, a: np.ndarray, b: np.ndarray, ra: float, rb: float):
    """Distance-minus-radius (mm) to a cone segment a->b with radii ra->rb; returns (sd, t)."""
    d = (b - a).astype(np.float32)
    dd = float(d @ d) or 1e-6
    px, py, pz = (xyz[k] - np.float32(a[k]) for k in range(3))
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / np.float32(dd), 0.0, 1.0)
    dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
    return dist - (np.float32(ra) + t * np.float32(rb - ra)), t


def tube_field(canvas: Canvas, points: np.ndarray, radii: np.ndarray, pad_mm: float = 6.0) -> TubeField | None:
    """Union of cone segments along a polyline (N, 3) with radii (N,), on the tube's box.

    Loops over segments, each evaluated on its own small box only (cheap for long thin tubes).
    Voxels farther than pad_mm outside the tube keep sd = +inf.
    """
    r = np.asarray(radii, dtype=np.float64)
    margin = r.max() + pad_mm
    box = canvas.box(points.min(0) - margin, points.max(0) + margin)
    if box is None:
        return None
    shape = tuple(s.stop - s.start for s in box)
    sd = np.full(shape, np.inf, dtype=np.float32)
    seg = np.zeros(shape, dtype=np.int32)
    tt = np.zeros(shape, dtype=np.float32)
    for i in range(len(points) - 1):
        m = max(r[i], r[i + 1]) + pad_mm
        sub = canvas.box(np.minimum(points[i], points[i + 1]) - m,
                         np.maximum(points[i], points[i + 1]) + m)
        if sub is None:
            continue
        local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box, strict=True))
        f, t = _segment_sd(canvas.coords(sub), points[i], points[i + 1], r[i], r[i + 1])
        better = f < sd[local]
        sd[local] = np.where(better, f, sd[local])
        seg[local] = np.where(better, i, seg[local])
        tt[local] = np.where(better, t, tt[local])
    return TubeField(box, sd, seg, tt)


def tube_sd_points(xyz: np.ndarray, points: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like `tube_field` for a list of world points (M, 3): returns (sd (M,), arclength (M,))."""
    s = arclength(points)
    best = np.full(len(xyz), np.inf)
    arc = np.zeros(len(xyz))
    cols = (xyz[:, 0], xyz[:, 1], xyz[:, 2])
    for i in range(len(points) - 1):
        f, t = _segment_sd(cols, points[i].astype(np.float64), points[i + 1].astype(np.float64),
                           float(radii[i]), float(radii[i + 1]))
        better = f < best
        best = np.where(better, f, best)
        arc = np.where(better, s[i] + t * (s[i + 1] - s[i]), arc)
    return best, arc


# ---------------------------------------------------------------------------------------------
# Cutting organs out of fields
# ---------------------------------------------------------------------------------------------
def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def select_volume(field: np.ndarray, avail: np.ndarray, n_vox: int, connected: bool = True) -> np.ndarray:
    """The `n_vox` available voxels with the lowest field values (an iso-surface of the field).

    With `connected`, only the largest component is kept and the level is raised until it holds
    n_vox voxels (a few rounds). If fewer voxels are available, all of them are returned.
    """
    vals = field[avail]
    order_vals = np.sort(vals[np.isfinite(vals)])
    if order_vals.size == 0 or n_vox <= 0:
        return np.zeros(field.shape, bool)
    want = n_vox
    mask = np.zeros(field.shape, bool)
    for _ in range(4):
        level = order_vals[min(want, order_vals.size) - 1]
        mask = avail & (field <= level)
        if not connected:
            return mask
        mask = largest_component(mask)
        have = int(mask.sum())
        if have >= n_vox or want >= order_vals.size:
            break
        want += n_vox - have
    return mask

"""Colon and colorectal tumours of the phantom; the colon segment map.

The colon is one tube along a smooth centreline: caecum (right lower) -> ascending -> hepatic
flexure -> transverse (anterior, sagging) -> splenic flexure -> descending -> sigmoid (left lower
to midline) -> rectum (midline, posterior, lowest). Segment boundaries are arclengths along the
centreline; a voxel's segment is that of its nearest centreline point (smallest distance minus
radius), so painting and `colon_segment_map` agree. Sites follow shared/findings.SITES:
ascending (caecum, hepatic flexure), transverse, descending (splenic flexure), sigmoid, rectum.
"""

from __future__ import annotations

import logging

import numpy as np

from shared.data.phantom_body import Body
from shared.data.phantom_shapes import (
    Canvas,
    arclength,
    catmull_rom,
    random_waves,
    select_volume,
    tube_field,
    tube_sd_points,
    wave_field,
)
from shared.data.phantom_tissues import T
from shared.findings import SITES, Findings

log = logging.getLogger(__name__)

WALL_MM = 3.0
CENTRELINE_STEP_MM = 5.0
# control-point index where each of the 4 inner boundaries lies (see colon_control_points)
_BOUNDARY_CTRL = (5, 8, 13, 17)


def colon_control_points(body: Body, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Control points (21, 3) mm and radii (21,) mm of the colon course, varied per case."""
    ac, bc, yc = body.ac0, body.bc0, body.yc
    ys = lambda z: float(body.spine_y(z))  # noqa: E731
    sag = rng.uniform(-25, 15)
    fl = rng.uniform(-8, 8)
    ctrl = np.array([
        [0.6 * ac, yc + 0.3 * bc, -100],  # 0 caecal pole
        [0.68 * ac, yc + 0.2 * bc, -70],
        [0.72 * ac, yc + 0.15 * bc, -20],  # ascending
        [0.72 * ac, yc + 0.12 * bc, 25],
        [0.62 * ac, yc + 0.28 * bc, 45 + fl],  # hepatic flexure
        [0.42 * ac, yc + 0.55 * bc, 35 + fl],  # 5: -> transverse
        [0.15 * ac, yc + 0.7 * bc, 8 + sag],
        [-0.15 * ac, yc + 0.7 * bc, 8 + sag],
        [-0.45 * ac, yc + 0.6 * bc, 48],  # 8: -> descending (splenic flexure included)
        [-0.66 * ac, yc + 0.3 * bc, 78 + fl],  # splenic flexure
        [-0.73 * ac, yc + 0.08 * bc, 58],
        [-0.74 * ac, yc + 0.12 * bc, 10],
        [-0.72 * ac, yc + 0.12 * bc, -40],
        [-0.66 * ac, yc + 0.15 * bc, -80],  # 13: -> sigmoid
        [-0.45 * ac, yc + 0.45 * bc, -108],
        [-0.12 * ac, yc + 0.5 * bc, -96],
        [0.12 * ac, yc + 0.3 * bc, -104],
        [0.03 * ac, ys(-105) + 42, -108],  # 17: -> rectum (rectosigmoid junction)
        [0.0, ys(-135) + 42, -135],
        [0.0, ys(-165) + 44, -165],
        [0.0, ys(-193) + 48, -194],
    ])
    ctrl[1:17] += rng.uniform(-5, 5, (16, 3))
    radii = np.array([32, 30, 25, 24, 24, 23, 23, 23, 22, 22, 21, 20, 20, 19, 17, 17, 17, 18, 24, 26, 16])
    return ctrl, radii * rng.uniform(0.9, 1.1)


def colon_centreline(body: Body, rng: np.random.Generator) -> dict:
    """Dense centreline (M, 3), radii (M,) with haustral modulation, and the 4 boundary arclengths."""
    ctrl, radii = colon_control_points(body, rng)
    pts, param = catmull_rom(ctrl, CENTRELINE_STEP_MM)
    s = arclength(pts)
    r = np.interp(param, np.arange(len(radii)), radii)
    haustra = np.where(param < _BOUNDARY_CTRL[3], 0.12, 0.0) * np.cos(2 * np.pi * s / rng.uniform(26, 34))
    boundaries = np.interp(_BOUNDARY_CTRL, param, s)
    return {"points": pts, "radii": r * (1 + haustra), "boundaries": boundaries}


def site_of_arclength(arc: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Segment index into SITES for arclength(s) (mm) along the centreline."""
    return np.searchsorted(np.asarray(boundaries), arc, side="right")


# ---------------------------------------------------------------------------------------------
def tumour_params(rng: np.random.Generator) -> dict[str, dict]:
    """Per-site tumour shape and position draws (drawn for every site, used for the named ones)."""
    out = {}
    for site in SITES:
        dirs = rng.normal(size=(6, 3))
        out[site] = {"u": rng.uniform(0, 1), "dirs": dirs / np.linalg.norm(dirs, axis=1, keepdims=True),
                     "amps": rng.uniform(0.1, 0.35, 6), "waves": random_waves(rng, 3, 2.0, (15, 40))}
    return out


def _tumour_centre(line: dict, site: str, radius: float, u: float) -> tuple[float, np.ndarray]:
    """Arclength and world position of a tumour centre inside its segment, away from boundaries."""
    k = SITES.index(site)
    b = np.concatenate([[0.0], line["boundaries"], [arclength(line["points"])[-1]]])
    margin = 1.2 * radius + 6.0
    lo, hi = b[k] + margin, b[k + 1] - margin
    if hi < lo:
        log.warning("colon segment %s (%.0f mm) is short for a %.0f mm tumour", site,
                    b[k + 1] - b[k], 2 * radius)
        lo = hi = 0.5 * (b[k] + b[k + 1])
    s = lo + u * (hi - lo)
    arc = arclength(line["points"])
    pos = np.array([np.interp(s, arc, line["points"][:, d]) for d in range(3)])
    return s, pos


def place_tumours(line: dict, findings: Findings, params: dict[str, dict]) -> list[dict]:
    """Centres of the findings' tumours; a second tumour is moved along its segment if it would
    touch the first."""
    placed: list[dict] = []
    for tumour in findings.tumors:
        if tumour.site is None:
            continue
        radius = 0.5 * float(tumour.size_mm or 30.0)
        u0 = params[tumour.site]["u"]
        for u in (u0, 1 - u0, 0.0, 1.0, 0.5):
            s, pos = _tumour_centre(line, tumour.site, radius, u)
            if all(np.linalg.norm(pos - p["centre"]) > 1.4 * (radius + p["radius"]) + 10 for p in placed):
                break
        placed.append({"site": tumour.site, "radius": radius, "arclength": s, "centre": pos})
    return placed


def paint_tumour(canvas: Canvas, tumour: dict, shape: dict) -> float:
    """A lobulated tumour with exactly the volume of a sphere of its diameter; returns mL."""
    c, r = tumour["centre"], tumour["radius"]
    box = canvas.box(c - 2 * r - 10, c + 2 * r + 10)
    if box is None:
        return 0.0
    x, y, z = canvas.coords(box)
    d = [x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])]
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-3)
    lob = np.float32(0.0)
    for v, a in zip(shape["dirs"].astype(np.float32), shape["amps"], strict=True):
        cos = (d[0] * v[0] + d[1] * v[1] + d[2] * v[2]) / dist
        lob = lob + np.float32(a) * np.maximum(cos, 0) ** 3
    f = dist - r * (1 + lob) + wave_field((x, y, z), shape["waves"])
    n = int(round(np.pi / 6 * (2 * r) ** 3 / 1000 / canvas.grid.voxel_ml))
    mask = select_volume(f, canvas.tissue[box] == T.FAT, max(n, 1))
    canvas.tissue[box][mask] = T.TUMOR
    return float(mask.sum()) * canvas.grid.voxel_ml


def paint_colon(canvas: Canvas, line: dict) -> float:
    """The colon tube into free voxels: 3 mm wall; gas lumen, stool in the dependent caecum and
    ascending colon, a little fluid in the dependent sigmoid and rectum. Returns mL."""
    pts, radii, b = line["points"], line["radii"], line["boundaries"]
    tf = tube_field(canvas, pts, radii, pad_mm=1.0)
    if tf is None:
        return 0.0
    tissue = canvas.tissue[tf.box]
    mask = (tf.sd <= 0) & (tissue == T.FAT)
    lumen = mask & (tf.sd < -WALL_MM)
    arc = tf.arclength(pts)
    depth = canvas.coords(tf.box)[1] - tf.centre(pts, 1)  # mm above the centreline (anterior)
    tissue[mask] = T.COLON_WALL
    tissue[lumen] = T.COLON_GAS
    tissue[lumen & (arc < 0.75 * b[0]) & (depth < 4)] = T.COLON_STOOL
    tissue[lumen & (arc > b[2]) & (depth < -10)] = T.COLON_FLUID
    return float(mask.sum()) * canvas.grid.voxel_ml


def colon_meta(line: dict) -> dict:
    """JSON-serialisable description of the colon course (what colon_segment_map needs)."""
    return {
        "centreline_mm": np.round(line["points"], 2).tolist(),
        "radius_mm": np.round(line["radii"], 2).tolist(),
        "boundaries_mm": np.round(line["boundaries"], 2).tolist(),
        "segments": list(SITES),
        "length_mm": round(float(arclength(line["points"])[-1]), 1),
    }


def colon_segment_map(labels: np.ndarray, affine: np.ndarray, colon: dict,
                      ids: tuple[int, ...] = (9, 11)) -> np.ndarray:
    """Segment of every colon / tumour voxel: (X, Y, Z) int8, index into SITES, -1 elsewhere.

    labels: (X, Y, Z) class ids; affine: (4, 4) voxel -> world mm; colon: `meta["colon"]` of
    a PhantomCase (centreline_mm, radius_mm, boundaries_mm); ids: the classes mapped (colon, tumour).
    """
    out = np.full(labels.shape, -1, dtype=np.int8)
    idx = np.argwhere(np.isin(labels, ids))
    if len(idx) == 0:
        return out
    xyz = idx @ affine[:3, :3].T + affine[:3, 3]
    _, arc = tube_sd_points(xyz, np.asarray(colon["centreline_mm"]), np.asarray(colon["radius_mm"]))
    out[tuple(idx.T)] = site_of_arclength(arc, colon["boundaries_mm"])
    return out


def site_of_point(xyz_mm: np.ndarray, colon: dict) -> str:
    """Colon segment (a SITES name) whose centreline is nearest to a world point (mm)."""
    _, arc = tube_sd_points(np.atleast_2d(np.asarray(xyz_mm, dtype=np.float64)),
                            np.asarray(colon["centreline_mm"]), np.asarray(colon["radius_mm"]))
    return SITES[int(site_of_arclength(arc, colon["boundaries_mm"])[0])]

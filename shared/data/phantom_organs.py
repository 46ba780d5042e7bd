"""Abdominal organs of the phantom: kidneys, liver, spleen, stomach, duodenum, pancreas, bladder,
small bowel (DESIGN.md section 3 table). The colon lives in phantom_colon.py.

Each `paint_*` function draws its random parameters from its own generator (so the anatomy of a
seed does not change when a finding changes), builds an implicit field on the organ's box, and
cuts the organ with `select_volume` from the still-free voxels (visceral fat) at a target volume.
Painting order = priority, set by the caller (phantom.py). Volumes in mL, lengths in mm.
"""

from __future__ import annotations

import numpy as np

from shared.data.phantom_body import Body, paint_tube
from shared.data.phantom_shapes import (
    Canvas,
    catmull_rom,
    ellipsoid_field,
    random_waves,
    rotation,
    select_volume,
    smooth_union,
    tube_field,
    wave_field,
)
from shared.data.phantom_tissues import T

# target volumes (mL) drawn uniformly; slightly inside the table's ranges
LIVER_ML = (1250, 1750)
SPLEEN_ML = (160, 240)
SPLEEN_ENLARGED_FACTOR = (2.1, 2.9)
KIDNEY_ML = (125, 165)
STOMACH_ML = (330, 770)
PANCREAS_ML = (65, 95)
BLADDER_ML = (110, 250)
# distended = 2x a fuller-than-average bladder (2 x 180-290 mL): separable from normal by volume
BLADDER_DISTENDED_FACTOR = 2.0
BLADDER_DISTENDED_BASE_ML = (180, 290)


def _cut(canvas: Canvas, field: np.ndarray, box, volume_ml: float, avail: np.ndarray | None = None):
    """Mask (on box) of the organ: `volume_ml` of free voxels with the lowest field values."""
    free = canvas.tissue[box] == T.FAT
    if avail is not None:
        free &= avail
    n = int(round(volume_ml / canvas.grid.voxel_ml))
    return select_volume(field, free & (field < 40), n)


def _volume(mask: np.ndarray, canvas: Canvas) -> float:
    return float(mask.sum()) * canvas.grid.voxel_ml


# ---------------------------------------------------------------------------------------------
def paint_kidneys(canvas: Canvas, body: Body, rng: np.random.Generator, present: dict[str, bool]) -> dict:
    """Both kidneys (cortex, medulla, fat-filled sinus at the hilum), right 10-20 mm lower.

    `present` = {"left": bool, "right": bool}; an absent kidney leaves fat and surgical clips.
    """
    z_left = rng.uniform(38, 52)
    drop = rng.uniform(12, 18)
    meta: dict = {"right_lower_by_mm": round(drop, 1)}
    ys = float(body.spine_y(40.0))
    for side, name, zc in ((-1, "left", z_left), (1, "right", z_left - drop)):
        radii = np.array([26, 22, 56]) * rng.uniform(0.93, 1.07, 3)
        centre = np.array([side * (40 + 0.24 * body.ac0), ys + rng.uniform(0, 6), zc])
        rot = rotation(yaw=side * np.deg2rad(rng.uniform(-40, -25)), pitch=side * np.deg2rad(rng.uniform(8, 16)),
                       roll=np.deg2rad(rng.uniform(-12, -4)))
        waves = random_waves(rng, 3, 3.0)
        volume = rng.uniform(*KIDNEY_ML)
        clips = rng.uniform(-1, 1, (3, 3)) * 8
        if not present[name]:
            for c in clips:  # surgical clips at the former hilum
                box = canvas.box(centre + c - 1.5, centre + c + 1.5)
                if box is not None:
                    canvas.tissue[box][canvas.tissue[box] == T.FAT] = T.CLIP
            meta[name] = {"present": False}
            continue
        box = canvas.box(centre - 75, centre + 75)
        xyz = canvas.coords(box)
        f = ellipsoid_field(xyz, centre, radii, rot) + wave_field(xyz, waves)
        hilum = centre - side * rot[:, 0] * radii[0] * 0.6  # faces antero-medially
        sinus = ellipsoid_field(xyz, hilum, (13, 9, 24), rot) < 0
        mask = _cut(canvas, f, box, volume, avail=~sinus)
        tissue = canvas.tissue[box]
        cortex, medulla = ((T.KIDNEY_L_CORTEX, T.KIDNEY_L_MEDULLA) if side < 0
                           else (T.KIDNEY_R_CORTEX, T.KIDNEY_R_MEDULLA))
        tissue[mask] = np.where(f < -7, medulla, cortex)[mask]
        meta[name] = {"present": True, "volume_ml": round(_volume(mask, canvas), 1),
                      "hilum_mm": [round(float(v), 1) for v in hilum]}
        ivc = [0.17 * body.ac0, ys + 32, zc + 8]
        route = [[-25, ys + 48, zc + 4], [-4, ys + 50, zc + 6]] if side < 0 else [[40, ys + 30, zc + 4]]
        paint_tube(canvas, [hilum, *route, ivc], [4.5] * (len(route) + 2), T.VEIN)
    return meta


def paint_liver(canvas: Canvas, body: Body, rng: np.random.Generator) -> dict:
    """Liver: smooth union of right lobe, inferior right tip and left lobe, deformed, under the
    right hemidiaphragm; gallbladder at its inferior surface."""
    ac, bc, yc = body.ac0, body.bc0, body.yc
    j = lambda s: rng.uniform(-s, s)  # noqa: E731
    right = ((0.45 * ac + j(6), yc + 0.05 * bc + j(5), 128 + j(8)), (0.62 * ac, 0.95 * bc, 80))
    tip = ((0.7 * ac + j(5), yc - 0.05 * bc + j(5), 62 + j(10)), (0.3 * ac, 0.6 * bc, 50 + j(8)))
    left = ((-0.12 * ac + j(8), yc + 0.5 * bc + j(5), 148 + j(8)), (0.55 * ac + j(8), 0.38 * bc, 38))
    rot = rotation(yaw=np.deg2rad(j(6)), pitch=np.deg2rad(j(6)))
    waves = random_waves(rng, 5, 10.0, (90, 220))
    volume = rng.uniform(*LIVER_ML)
    gb_c = np.array([0.32 * ac + j(6), yc + 0.5 * bc + j(5), 72 + j(8)])
    gb_rot = rotation(yaw=np.deg2rad(j(20)), roll=np.deg2rad(35 + j(10)))
    gb_r = np.array([14, 15, 32]) * rng.uniform(0.8, 1.15, 3)

    box = canvas.box(np.array([-0.8 * ac, yc - bc - 5, -20]), np.array([ac + 5, yc + bc + 20, 230]))
    xyz = canvas.coords(box)
    gb = ellipsoid_field(xyz, gb_c, gb_r, gb_rot) < 0
    tissue = canvas.tissue[box]
    tissue[gb & (tissue == T.FAT)] = T.GALLBLADDER
    f = ellipsoid_field(xyz, *right, rot)
    f = smooth_union(f, ellipsoid_field(xyz, *tip, rot), 20.0)
    f = smooth_union(f, ellipsoid_field(xyz, *left, rotation(pitch=np.deg2rad(-12))), 25.0)
    f = f + wave_field(xyz, waves)
    mask = _cut(canvas, f, box, volume)
    tissue[mask] = T.LIVER
    return {"volume_ml": round(_volume(mask, canvas), 1)}


def paint_spleen(canvas: Canvas, body: Body, rng: np.random.Generator, enlarged: bool) -> dict:
    """Spleen: a crescent (ellipsoid minus a medial sphere) against the left posterolateral wall."""
    ac, bc, yc = body.ac0, body.bc0, body.yc
    u, v = -0.68 + rng.uniform(-0.04, 0.04), -0.45 + rng.uniform(-0.05, 0.05)
    normal = np.array([u / ac, v / bc, 0.0])
    normal /= np.linalg.norm(normal)
    yaw = np.arctan2(normal[1], normal[0])
    volume = rng.uniform(*SPLEEN_ML)
    factor = rng.uniform(*SPLEEN_ENLARGED_FACTOR)
    waves = random_waves(rng, 3, 5.0)
    zc = 130 + rng.uniform(-8, 8)
    radii = np.array([26, 62, 52]) * rng.uniform(0.92, 1.08, 3)
    tilt = np.deg2rad(rng.uniform(10, 25))
    if enlarged:
        s = factor ** (1 / 3)
        radii = radii * s * np.array([1.0, 1.05, 1.1])
        zc -= 45 * (s - 1)
        volume *= factor
    centre = np.array([u * ac, yc + v * bc, zc])
    rot = rotation(yaw=yaw, roll=tilt)
    box = canvas.box(centre - radii.max() - 40, centre + radii.max() + 40)
    xyz = canvas.coords(box)
    f = ellipsoid_field(xyz, centre, radii, rot)
    hollow = ellipsoid_field(xyz, centre - normal * (radii[0] + 45), (55, 55, 70), rot)
    f = np.maximum(f, -hollow) + wave_field(xyz, waves)
    mask = _cut(canvas, f, box, volume)
    canvas.tissue[box][mask] = T.SPLEEN
    return {"volume_ml": round(_volume(mask, canvas), 1), "enlargement_factor": round(factor, 2) if enlarged else 1.0}


def _hollow(canvas: Canvas, ctrl: np.ndarray, radii, volume_ml: float | None, wall_mm: float,
            waves: np.ndarray | None, tissues: tuple[T, T, T], gas_fraction: float) -> tuple:
    """A hollow organ as a tube: wall / fluid / gas tissues; gas in the anterior lumen.

    Returns (mask on box, box, tube field). With volume_ml None, the tube is painted as is.
    """
    pts, param = catmull_rom(np.asarray(ctrl, dtype=np.float64), 5.0)
    tf = tube_field(canvas, pts, np.interp(param, np.arange(len(radii)), radii), pad_mm=25.0)
    if tf is None:
        return None, None, None
    f = tf.sd if waves is None else tf.sd + wave_field(canvas.coords(tf.box), waves)
    if volume_ml is None:
        mask = (f <= 0) & (canvas.tissue[tf.box] == T.FAT)
        level = 0.0
    else:
        mask = _cut(canvas, f, tf.box, volume_ml)
        level = float(f[mask].max()) if mask.any() else 0.0
    wall_t, fluid_t, gas_t = tissues
    lumen = mask & (f < level - wall_mm)
    tissue = canvas.tissue[tf.box]
    tissue[mask] = wall_t
    tissue[lumen] = fluid_t
    if gas_fraction > 0 and lumen.any():
        y = canvas.coords(tf.box)[1]
        ylum = np.broadcast_to(y, lumen.shape)[lumen]
        tissue[lumen & (y >= np.quantile(ylum, 1 - gas_fraction))] = gas_t
    return mask, tf.box, tf


def paint_stomach(canvas: Canvas, body: Body, rng: np.random.Generator) -> dict:
    """J-shaped stomach: fundus under the left dome, body down the left, antrum to the pylorus."""
    ac, bc, yc = body.ac0, body.bc0, body.yc
    j = lambda s: rng.uniform(-s, s, 3)  # noqa: E731
    ctrl = np.array([[-0.35 * ac, yc - 0.2 * bc, 165], [-0.45 * ac, yc + 0.15 * bc, 128],
                     [-0.38 * ac, yc + 0.45 * bc, 98], [-0.1 * ac, yc + 0.62 * bc, 78],
                     [0.12 * ac, yc + 0.58 * bc, 80], [0.26 * ac, yc + 0.42 * bc, 86]])
    ctrl = ctrl + np.vstack([j(7) for _ in ctrl])
    radii = np.array([42, 40, 34, 24, 18, 12]) * rng.uniform(0.9, 1.1)
    volume = rng.uniform(*STOMACH_ML)
    gas = rng.uniform(0.08, 0.4)
    waves = random_waves(rng, 3, 4.0)
    mask, _, _ = _hollow(canvas, ctrl, radii, volume, 4.0, waves,
                         (T.STOMACH_WALL, T.STOMACH_FLUID, T.STOMACH_GAS), gas)
    return {"volume_ml": round(_volume(mask, canvas), 1) if mask is not None else 0.0,
            "pylorus_mm": [round(float(v), 1) for v in ctrl[-1]]}


def paint_duodenum(canvas: Canvas, body: Body, rng: np.random.Generator, pylorus: np.ndarray) -> dict:
    """Duodenal C-loop right of midline: bulb, descending, horizontal (in front of the aorta),
    ascending part to the duodenojejunal flexure (returned as the start of the small bowel)."""
    ac = body.ac0
    ys = float(body.spine_y(20.0))
    zi = rng.uniform(-18, -5)
    ctrl = np.array([pylorus, [0.38 * ac, pylorus[1] - 18, 80], [0.44 * ac, ys + 44, 58],
                     [0.45 * ac, ys + 44, 22], [0.38 * ac, ys + 50, zi + 5], [0.12 * ac, ys + 60, zi],
                     [-0.1 * ac, ys + 60, zi + 2], [-0.2 * ac, ys + 58, zi + 15], [-0.22 * ac, ys + 60, 20]])
    ctrl[1:] += rng.uniform(-4, 4, (len(ctrl) - 1, 3))
    radii = np.array([11, 13, 13, 13, 13, 12, 12, 12, 12]) * rng.uniform(0.9, 1.1)
    _hollow(canvas, ctrl, radii, None, 3.0, None,
            (T.DUODENUM_WALL, T.DUODENUM_FLUID, T.DUODENUM_GAS), rng.uniform(0.0, 0.15))
    return {"dj_flexure_mm": ctrl[-1], "head_mm": np.array([0.24 * ac, ys + 52, 24.0])}


def paint_pancreas(canvas: Canvas, body: Body, rng: np.random.Generator, head: np.ndarray,
                   splenic_hilum: np.ndarray) -> dict:
    """Pancreas: head in the C-loop, neck and body across the spine anterior to the aorta,
    tail to the splenic hilum; a lobulated tube cut at the target volume."""
    ac = body.ac0
    ys = float(body.spine_y(40.0))
    ctrl = np.array([head + [0, 0, -8], head + [-4, 6, 8], [0.02 * ac, ys + 66, 34],
                     [-0.2 * ac, ys + 62, 42], [-0.42 * ac, ys + 44, 52], splenic_hilum + [8, 8, -4]])
    ctrl[1:] += rng.uniform(-4, 4, (len(ctrl) - 1, 3))
    radii = np.array([15, 16, 11, 11, 10, 8]) * rng.uniform(0.9, 1.1)
    volume = rng.uniform(*PANCREAS_ML)
    waves = random_waves(rng, 4, 3.0, (30, 60))
    pts, param = catmull_rom(ctrl, 5.0)
    tf = tube_field(canvas, pts, np.interp(param, np.arange(len(radii)), radii), pad_mm=20.0)
    mask = _cut(canvas, tf.sd + wave_field(canvas.coords(tf.box), waves), tf.box, volume)
    canvas.tissue[tf.box][mask] = T.PANCREAS
    return {"volume_ml": round(_volume(mask, canvas), 1)}


def paint_bladder(canvas: Canvas, body: Body, rng: np.random.Generator, distended: bool) -> dict:
    """Urinary bladder in the pelvis behind the pubis, anterior to the rectum; 3 mm wall."""
    q = rng.uniform()  # one draw either way, so the rest of the anatomy does not depend on it
    lo, hi = BLADDER_DISTENDED_BASE_ML if distended else BLADDER_ML
    volume = (lo + q * (hi - lo)) * (BLADDER_DISTENDED_FACTOR if distended else 1.0)
    r = (3 * volume * 1000 / (4 * np.pi)) ** (1 / 3)
    radii = r * np.array([1.25, 0.9, 0.88]) * rng.uniform(0.95, 1.05, 3)
    front = body.yc + float(body.bc_ant(-170.0))
    centre = np.array([rng.uniform(-6, 6), min(body.yc + 0.3 * body.bc0 + 0.3 * r, front - radii[1] - 4),
                       -188 + radii[2]])
    waves = random_waves(rng, 3, 3.0)
    box = canvas.box(centre - radii - 40, centre + radii + 40)
    xyz = canvas.coords(box)
    f = ellipsoid_field(xyz, centre, radii) + wave_field(xyz, waves)
    mask = _cut(canvas, f, box, volume)
    level = float(f[mask].max()) if mask.any() else 0.0
    tissue = canvas.tissue[box]
    tissue[mask] = np.where(f < level - 3.0, T.URINE, T.BLADDER_WALL)[mask]
    return {"volume_ml": round(_volume(mask, canvas), 1)}


def small_bowel_path(body: Body, rng: np.random.Generator, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Control points (N, 3) of the small-bowel course from the duodenojejunal flexure to the
    ileocaecal valve: a serpentine of wavy, oblique up-and-down runs filling the mid and lower
    abdomen column by column (jejunum left upper, ileum right lower), so axial slices cut the
    loops across as in a real scan."""
    ac, yc = body.ac0, body.yc
    ys = float(body.spine_y(-30.0))
    y_back, y_front = ys + 46, yc + float(body.bc_ant(-40.0)) - 20
    n_rows = int(np.clip((y_front - y_back) // 28 + 1, 2, 3))
    rows = np.linspace(y_back, y_front, n_rows)
    columns = [(x, y) for x in np.linspace(-0.55 * ac, 0.4 * ac, 6)
               for y in (rows if int(round(x)) % 2 == 0 else rows[::-1])]
    z_top, z_bot = rng.uniform(0, 12), rng.uniform(-128, -116)
    pts = [start]
    for k, (x, y) in enumerate(columns):
        zs = np.linspace(z_top, z_bot, 5) if k % 2 == 0 else np.linspace(z_bot, z_top, 5)
        for j, z in enumerate(zs):
            wiggle = 10 * (-1) ** j
            pts.append([x + wiggle + rng.uniform(-6, 6), y + rng.uniform(-6, 6), z + rng.uniform(-6, 6)])
    pts.append(end)
    return np.array(pts)


def paint_small_bowel(canvas: Canvas, body: Body, rng: np.random.Generator, start: np.ndarray,
                      end: np.ndarray) -> dict:
    """Small bowel loops (wall, fluid, gas pockets) in whatever free space remains."""
    ctrl = small_bowel_path(body, rng, start, end)
    pts, _ = catmull_rom(ctrl, 6.0)
    radii = np.full(len(pts), rng.uniform(11, 13.5))
    phase = rng.uniform(0, 2 * np.pi)
    tf = tube_field(canvas, pts, radii, pad_mm=1.0)
    if tf is None:
        return {"volume_ml": 0.0}
    tissue = canvas.tissue[tf.box]
    mask = (tf.sd <= 0) & (tissue == T.FAT)
    arc = tf.arclength(pts)
    gassy = np.sin(arc / 70.0 + phase) > 0.55
    y = canvas.coords(tf.box)[1]
    lumen = mask & (tf.sd < -2.5)
    tissue[mask] = T.SB_WALL
    tissue[lumen] = T.SB_FLUID
    tissue[lumen & gassy & (y > tf.centre(pts, 1) + 3)] = T.SB_GAS
    return {"volume_ml": round(_volume(mask, canvas), 1)}

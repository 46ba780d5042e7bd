"""Body wall, thorax base, skeleton, muscles and great vessels of the phantom (DESIGN.md section 3).

All positions are in world mm (x patient's right, y anterior, z superior; the default field spans
z -200..200 mm from pelvic floor to liver dome). Lateral positions scale with the peritoneal
cavity half-width `ac`, antero-posterior ones with the cavity half-depth `bc` or hang off the
spine line `spine_y(z)`, so organs follow the body habitus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data.phantom_shapes import Canvas, catmull_rom, ellipsoid_field, tube_field
from shared.data.phantom_tissues import T


def smoothstep(z: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """0 at z=a, 1 at z=b, smooth in between (a > b allowed)."""
    u = np.clip((np.asarray(z, dtype=np.float32) - a) / (b - a), 0.0, 1.0)
    return u * u * (3 - 2 * u)


@dataclass(frozen=True)
class Body:
    """Habitus of one case; all lengths in mm."""

    ac0: float  # cavity half-width (x) at the upper abdomen
    bc0: float  # cavity half-depth (y), posterior half and anterior half at the upper abdomen
    yc: float  # cavity centre y
    fat: float  # subcutaneous fat thickness
    wall: float  # muscle wall thickness
    belly: float  # extra anterior depth of the lower abdomen
    hips: float  # extra pelvic half-width
    lordosis: float  # anterior shift of the mid-lumbar spine
    vert_period: float  # vertebra + disc height
    dome_z: float  # top of the right hemidiaphragm

    @staticmethod
    def sample(rng: np.random.Generator) -> Body:
        ac0 = rng.uniform(118, 146)
        fat = rng.uniform(8, 34)
        wall = rng.uniform(8, 13)
        fat = min(fat, 176 - ac0 - wall - 8)  # keep the widest part inside the 384 mm field
        return Body(ac0=ac0, bc0=rng.uniform(86, 104), yc=rng.uniform(-12, 0), fat=fat, wall=wall,
                    belly=rng.uniform(0, 14), hips=rng.uniform(0, 8), lordosis=rng.uniform(4, 12),
                    vert_period=rng.uniform(34, 39), dome_z=rng.uniform(186, 196))

    # -- profiles along z ----------------------------------------------------------------------
    def ac(self, z) -> np.ndarray:
        """Cavity half-width (mm) at height z: waist around z ~ -10, hips below z ~ -80."""
        z = np.asarray(z, dtype=np.float32)
        return self.ac0 - 6 * np.exp(-(((z + 10) / 50) ** 2)) + self.hips * smoothstep(z, -70, -150)

    def bc_ant(self, z) -> np.ndarray:
        """Anterior cavity half-depth (mm): the belly bulges around z ~ -50, the pelvis narrows."""
        z = np.asarray(z, dtype=np.float32)
        return (self.bc0 + self.belly * np.exp(-(((z + 50) / 70) ** 2))
                - 14 * smoothstep(z, -120, -200))

    def spine_y(self, z) -> np.ndarray:
        """y (mm) of the vertebral body centre: lumbar lordosis, sacrum curving back below L5."""
        z = np.asarray(z, dtype=np.float32)
        below = np.maximum(0.0, -95.0 - z)
        return (self.yc - self.bc0 + 60 + self.lordosis * np.exp(-(((z + 40) / 70) ** 2))
                - 0.55 * below + 0.006 * np.maximum(0.0, below - 35) ** 2)

    def cavity_norm(self, x, y, z, shrink: float = 0.0) -> np.ndarray:
        """Normalised elliptic radius of (x, y, z) w.r.t. the cavity grown by `-shrink` mm (<1 inside)."""
        b = np.where(y > self.yc, self.bc_ant(z), self.bc0) - shrink
        return np.sqrt((x / (self.ac(z) - shrink)) ** 2 + ((y - self.yc) / b) ** 2)

    def diaphragm_z(self, x, y) -> np.ndarray:
        """Height (mm) of the diaphragm over (x, y): right dome higher than the left."""
        dy = ((y - (self.yc - 0.1 * self.bc0)) / (1.15 * self.bc0)) ** 2
        right = self.dome_z - 85 * (((x - 0.45 * self.ac0) / (0.95 * self.ac0)) ** 2 + dy)
        left = self.dome_z - 14 - 85 * (((x + 0.45 * self.ac0) / (0.95 * self.ac0)) ** 2 + dy)
        return np.maximum(right, left)


# ---------------------------------------------------------------------------------------------
def paint_body(canvas: Canvas, body: Body) -> None:
    """Air, subcutaneous fat, muscle wall (with linea alba), visceral fat, lungs, heart, diaphragm."""
    x, y, z = canvas.coords(canvas.full_box())
    r_skin = body.cavity_norm(x, y, z, shrink=-(body.fat + body.wall))
    r_muscle = body.cavity_norm(x, y, z, shrink=-body.wall)
    r_cav = body.cavity_norm(x, y, z)
    tissue = canvas.tissue
    tissue[...] = T.AIR
    tissue[r_skin <= 1] = T.SUBCUT_FAT
    linea = (np.abs(x) < 4) & (y > body.yc)
    tissue[(r_muscle <= 1) & ~linea] = T.MUSCLE
    tissue[(r_muscle <= 1) & linea & (r_cav > 1)] = T.SUBCUT_FAT
    cavity = r_cav <= 1
    tissue[cavity] = T.FAT
    zd = body.diaphragm_z(x, y)
    tissue[cavity & (z > zd)] = T.LUNG
    tissue[cavity & (z > zd - 5) & (z <= zd)] = T.MUSCLE
    heart = ellipsoid_field((x, y, z), (-0.15 * body.ac0, body.yc + 0.35 * body.bc0, 240),
                            (0.6 * body.ac0, 0.6 * body.bc0, 62)) < 0
    tissue[heart & (tissue == T.LUNG)] = T.HEART


def paint_spine(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Vertebral bodies (cancellous + cortex), discs, canal, posterior arch, processes, sacrum."""
    lo = np.array([-70.0, body.yc - body.bc0 - 5, -400.0])
    hi = np.array([70.0, float(body.spine_y(-40.0)) + 40, 400.0])
    box = canvas.box(lo, hi)
    if box is None:
        return
    x, y, z = canvas.coords(box)
    yb = body.spine_y(z)
    sacrum = smoothstep(z, -85, -110)  # 0 lumbar, 1 sacral
    rx = (17 + 8 * smoothstep(z, 190, -60)) * (1 - sacrum) + sacrum * (12 + 36 * smoothstep(z, -195, -100))
    ry = (15 + 4 * smoothstep(z, 190, -60)) * (1 - sacrum) + sacrum * (8 + 8 * smoothstep(z, -195, -100))
    q = np.sqrt((x / rx) ** 2 + ((y - yb) / ry) ** 2)
    phase = np.mod(z + 95.0 + rng.uniform(-3, 3), body.vert_period)  # L5/S1 disc at z ~ -95
    disc = (phase < 8.0) & (sacrum < 0.5)
    tissue = canvas.tissue[box]
    vb = q <= 1
    shell = q > 1 - 2.5 / np.minimum(rx, ry)
    tissue[vb] = np.where(disc, T.DISC, np.where(shell, T.CORTEX, T.BONE))[vb]
    # posterior arch around the canal, spinous and transverse processes (not at disc levels)
    ycan = yb - ry - 9 + 4 * sacrum
    rcan = np.float32(8) - 3 * sacrum
    dcan = np.sqrt(x**2 + (y - ycan) ** 2)
    arch = (dcan <= rcan + 6) & ~disc
    spinous = (np.abs(x) < 4 + sacrum * 6) & (y < ycan) & (y > ycan - 38 + 12 * sacrum) & (phase > 12)
    lumbar = (z < 110) & (sacrum < 0.5)
    transverse = (lumbar & (np.abs(y - (ycan + 4)) < 3.5) & (np.abs(x) < 38) & (phase > 14)
                  & (phase < 21))
    bone = (arch | spinous | transverse) & ~vb
    tissue[bone] = T.CORTEX
    tissue[(dcan <= rcan)] = T.CSF


def paint_ribs(canvas: Canvas, body: Body, rng: np.random.Generator) -> None:
    """Lower ribs: oblique arcs in the wall of the upper abdomen, descending anteriorly."""
    z0 = 175.0 + rng.uniform(-6, 6)
    for k in range(5):
        zk = z0 - k * 30
        for side in (-1, 1):
            ang = np.linspace(-0.42 * np.pi, 0.32 * np.pi, 9)  # -90deg = posterior, 0 lateral
            ang = ang if side > 0 else np.pi - ang
            zz = zk - 45 * (1 + np.sin(ang))  # posterior end highest
            rr = body.wall * 0.5
            xs = (body.ac(zz) + rr) * np.cos(ang)
            ys = body.yc + np.where(np.sin(ang) > 0, body.bc_ant(zz), body.bc0) * np.sin(ang) + rr * np.sin(ang)
            pts = np.stack([xs, ys, zz], 1)
            pts = pts[np.abs(xs) > 40]
            if len(pts) < 2:
                continue
            tf = tube_field(canvas, pts, np.full(len(pts), 5.0), pad_mm=1.0)
            if tf is None:
                continue
            tissue = canvas.tissue[tf.box]
            tissue[(tf.sd <= 0) & (tissue != T.AIR)] = T.RIB


def paint_muscles(canvas: Canvas, body: Body) -> None:
    """Paraspinal muscles, psoas and quadratus lumborum (tubes / ellipses beside the spine)."""
    box = canvas.box(np.array([-80.0, body.yc - body.bc0 - 2, -200.0]),
                     np.array([80.0, float(body.spine_y(-40.0)), 200.0]))
    if box is not None:
        x, y, z = canvas.coords(box)
        yb = body.spine_y(z)
        taper = 1 - 0.45 * smoothstep(z, -80, -170)
        cy = yb - 48 + 10 * smoothstep(z, -80, -170)
        para = ((np.abs(x) - 36 * taper) / (27 * taper)) ** 2 + ((y - cy) / (21 * taper)) ** 2 <= 1
        tissue = canvas.tissue[box]
        tissue[para & (tissue == T.FAT)] = T.MUSCLE
    ys = lambda z: float(body.spine_y(z))  # noqa: E731
    for side in (-1, 1):
        psoas = np.array([[22, ys(80) + 4, 80], [30, ys(25) + 5, 25], [40, ys(-30) + 6, -30],
                          [52, ys(-30) + 14, -80], [64, ys(-30) + 35, -130], [74, ys(-30) + 60, -185]])
        ql = np.array([[48, ys(60) - 18, 60], [60, ys(10) - 18, 10], [72, ys(-40) - 18, -40],
                       [82, ys(-60) - 20, -62]])
        for ctrl, radii in ((psoas, [5, 12, 19, 22, 20, 18]), (ql, [6, 12, 12, 6])):
            ctrl = ctrl * np.array([side, 1, 1])
            pts, param = catmull_rom(ctrl, 6.0)
            tf = tube_field(canvas, pts, np.interp(param, np.arange(len(radii)), radii), pad_mm=1)
            if tf is not None:
                tissue = canvas.tissue[tf.box]
                tissue[(tf.sd <= 0) & (tissue == T.FAT)] = T.MUSCLE


def paint_tube(canvas: Canvas, ctrl: np.ndarray, radii, tissue_id: int, into=(T.FAT,),
               step: float = 6.0) -> None:
    """Paint a smooth tube through control points (N, 3) with per-point radii into free tissue."""
    pts, param = catmull_rom(np.asarray(ctrl, dtype=np.float64), step)
    tf = tube_field(canvas, pts, np.interp(param, np.arange(len(radii)), radii), pad_mm=1)
    if tf is None:
        return
    tissue = canvas.tissue[tf.box]
    tissue[(tf.sd <= 0) & np.isin(tissue, into)] = tissue_id


def paint_vessels(canvas: Canvas, body: Body, rng: np.random.Generator) -> dict:
    """Aorta (left of midline), IVC (right), iliac vessels, portal / splenic / mesenteric veins.

    Returns landmarks (mm) used by the organs: the portal confluence and the splenic hilum.
    """
    ys = lambda z: float(body.spine_y(z))  # noqa: E731
    ac = body.ac0
    z_bif = rng.uniform(-55, -35)
    xa, xv = -0.09 * ac, 0.17 * ac
    aorta = [[xa, ys(200) + 30, 215], [xa, ys(100) + 31, 100], [xa + 2, ys(0) + 32, 0],
             [xa + 4, ys(z_bif) + 30, z_bif]]
    paint_tube(canvas, aorta, [12, 11.5, 11, 10], T.AORTA)
    ivc = [[xv * 0.9, ys(200) + 40, 215], [xv, ys(120) + 34, 120], [xv, ys(20) + 30, 20],
           [xv - 4, ys(z_bif - 12) + 26, z_bif - 12]]
    paint_tube(canvas, ivc, [13, 12.5, 12, 11], T.IVC)
    for side in (-1, 1):
        art = [[xa + 4, ys(z_bif) + 30, z_bif], [side * 30, ys(-70) + 24, -75],
               [side * 52, ys(-70) + 45, -130], [side * 68, ys(-70) + 75, -190]]
        paint_tube(canvas, art, [7, 6.5, 6, 6], T.ARTERY)
        vein = [[xv - 4, ys(z_bif - 12) + 26, z_bif - 12], [side * 26, ys(-70) + 12, -80],
                [side * 48, ys(-70) + 30, -135], [side * 64, ys(-70) + 62, -190]]
        paint_tube(canvas, vein, [9, 8, 7.5, 7], T.VEIN)
    confluence = np.array([0.03 * ac, ys(30) + 52, 30.0])
    hilum = np.array([-0.62 * ac, ys(65) + 18, 68.0])
    porta = np.array([0.3 * ac, ys(80) + 58, 80.0])
    paint_tube(canvas, [confluence, porta, porta + [0.25 * ac, -5, 18]], [7, 6.5, 5], T.VEIN)
    paint_tube(canvas, [porta, porta + [-0.35 * ac, 22, 22]], [5.5, 4], T.VEIN)
    splenic = [confluence, [-0.2 * ac, ys(40) + 44, 40], [-0.45 * ac, ys(55) + 30, 55], hilum]
    paint_tube(canvas, splenic, [5, 4.5, 4.5, 4], T.VEIN)
    paint_tube(canvas, [confluence, confluence + [6, 14, -35], confluence + [10, 22, -90]],
               [6, 5, 4], T.VEIN)
    sma = [[xa, ys(45) + 42, 45], [xa + 1, ys(20) + 58, 20], [xa + 4, ys(-40) + 68, -50]]
    paint_tube(canvas, sma, [4.5, 4, 3.5], T.ARTERY)
    return {"confluence": confluence, "splenic_hilum": hilum, "porta": porta,
            "aorta_x": xa, "ivc_x": xv, "z_bifurcation": z_bif}


# ---------------------------------------------------------------------------------------------
PELVIS_INTO = (T.FAT, T.MUSCLE, T.SUBCUT_FAT)  # unlabelled tissues pelvic bone may replace


def paint_pelvis(canvas: Canvas, body: Body, rng: np.random.Generator) -> dict:
    """Pelvic girdle and hip muscles: iliac wings, acetabula, femoral heads / necks / greater
    trochanters, pubic rami and symphysis, ischia; gluteal muscles and iliacus.

    Painted last, into unlabelled tissue only (bone into fat / muscle / subcutaneous fat, muscles
    into fat), so no labelled organ, vessel or the spine is ever displaced: the label map is the
    same with or without the pelvis. Where an organ reaches into the pelvic wall the bone is
    simply cut by it. Returns landmarks (mm) for the meta.
    """
    z_crest = rng.uniform(-62, -48)  # top of the iliac crest (~ L4/5)
    z_hip = rng.uniform(-184, -176)  # femoral head centre
    r_head = rng.uniform(21, 25)
    xs_hip = rng.uniform(0.64, 0.70)  # head centre |x| / cavity half-width
    flare = rng.uniform(0.86, 0.94)  # wing half-width at the crest / cavity half-width
    wing_t = rng.uniform(7, 10)  # wing thickness at the crest (mm)
    glut = rng.uniform(26, 40)  # gluteal thickness lateral / posterior to the wing (mm)
    neck_ang = np.deg2rad(rng.uniform(125, 135))  # neck-shaft angle
    antev = np.deg2rad(rng.uniform(8, 18))  # femoral anteversion

    ac_hip = float(body.ac(z_hip))
    hx, hy = xs_hip * ac_hip, body.yc + rng.uniform(-0.08, 0.05) * body.bc0
    y_front = float(body.yc + body.bc_ant(-195.0))
    lo = np.array([-float(body.ac(-200.0)) - body.wall - body.fat, body.yc - body.bc0 - body.wall - 2, -400.0])
    hi = np.array([-lo[0], y_front + 2, z_crest + 2])
    box = canvas.box(lo, hi)
    if box is None:
        return {}
    x, y, z = canvas.coords(box)
    ax = np.abs(x)
    tissue = canvas.tissue[box]
    ys = body.spine_y(z)  # (1, 1, nz)
    ac = body.ac(z)
    cav = body.cavity_norm(x, y, z) <= 1

    # -- iliac wing: an arc of an ellipse in each axial plane, from the sacroiliac joint (posterior)
    # to the anterior superior iliac spine; narrowing and thickening down toward the acetabulum.
    u = smoothstep(z, z_crest, z_hip + r_head + 8)  # 0 at the crest, 1 at the acetabular roof
    aw = flare * ac * (1 - u) + (hx + r_head + 4) * u  # half-width of the wing ellipse
    th_p = np.arccos(np.clip(46.0 / aw, -1, 1))  # the sacroiliac joint at |x| ~ 46 mm  # polar angle of the SI end below the x axis
    bw = 62.0 + 10 * u
    yw = ys + bw * np.sin(th_p) - 4  # ellipse centre y: SI end sits at the sacral level
    xn, yn = ax / aw, (y - yw) / bw
    rn = np.sqrt(xn**2 + yn**2)
    theta = np.arctan2(yn, xn)  # 0 lateral, + anterior
    th_ant = np.deg2rad(38 - 30 * u)  # anterior end (ASIS high, acetabular rim low)
    th_post = -th_p * (1 - 0.55 * smoothstep(z, -140.0, -165.0))  # SI joint ends below ~ S3
    scale = np.sqrt((aw * np.cos(theta)) ** 2 + (bw * np.sin(theta)) ** 2)
    dist = (rn - 1) * scale  # ~ signed distance from the wing mid-surface (mm, + outward)
    thick = wing_t + 16 * u**1.5
    in_arc = (theta >= th_post) & (theta <= th_ant) & (z <= z_crest)
    taper = np.minimum(np.minimum(theta - th_post, th_ant - theta) * scale / 6.0, 1.0)  # rounded ends
    half = 0.5 * thick * np.clip(taper, 0.3, 1.0)
    wing = in_arc & (np.abs(dist) <= half)
    wing_core = wing & (np.abs(dist) <= half - 2.5)

    # -- femoral head, neck, greater trochanter; acetabular cup; ischium; pubic rami + symphysis
    xyz_r = (ax, y, z)  # both sides by mirror symmetry
    hc = np.array([hx, hy, z_hip])
    d_head = np.sqrt((ax - hx) ** 2 + (y - hy) ** 2 + (z - z_hip) ** 2)
    head = d_head <= r_head
    # neck direction: lateral and down (neck-shaft angle), slightly posterior (anteversion seen from
    # the head the neck runs back toward the trochanter)
    nd = np.array([np.cos(neck_ang - np.pi / 2) * np.cos(antev), -np.sin(antev),
                   -np.sin(neck_ang - np.pi / 2)])
    nd /= np.linalg.norm(nd)
    troch = hc + nd * (r_head + 30)
    rel = np.stack(np.broadcast_arrays(ax - hx, y - hy, z - z_hip), 0)
    tpar = np.clip(np.tensordot(nd, rel, axes=1), 0, r_head + 30)
    perp = np.sqrt(np.maximum((rel**2).sum(0) - tpar**2, 0.0))
    neck = perp <= 14.0
    gt = ellipsoid_field(xyz_r, troch + np.array([6, -4, 6]), (16, 19, 22)) < 0
    shaft_top = ellipsoid_field(xyz_r, troch + np.array([2, 0, -30]), (15, 15, 30)) < 0
    # acetabulum: a thick cup around the head, open laterally / inferiorly / anteriorly
    cup_dir = np.array([-0.55, -0.15, 0.82])
    cup_dir /= np.linalg.norm(cup_dir)
    cosang = np.tensordot(cup_dir, rel, axes=1) / np.maximum(d_head, 1e-3)
    cup = (d_head > r_head + 1.5) & (d_head <= r_head + 13) & (cosang > -0.15)
    roof_gap = (d_head > r_head) & (d_head <= r_head + 1.5) & (cosang > -0.15)  # joint space
    ischium = ellipsoid_field(xyz_r, hc + np.array([-16, -34, -12]), (13, 18, 28)) < 0
    y_sym = min(y_front - 14, body.yc + 0.55 * body.bc0 + 25)
    z_sym = z_hip - 14
    ramus_pts = np.array([hc + np.array([-14, 16, -2]), [hx * 0.45, y_sym - 6, z_sym + 4],
                          [4.0, y_sym, z_sym]])
    ramus = np.zeros(np.broadcast_shapes(ax.shape, y.shape, z.shape), dtype=bool)
    for a, b, ra, rb in ((ramus_pts[0], ramus_pts[1], 11.0, 9.0), (ramus_pts[1], ramus_pts[2], 9.0, 10.0)):
        ab = b - a
        tt = np.clip(((ax - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / (ab @ ab), 0, 1)
        dd = np.sqrt((ax - a[0] - tt * ab[0]) ** 2 + (y - a[1] - tt * ab[1]) ** 2 + (z - a[2] - tt * ab[2]) ** 2)
        ramus |= dd <= ra + tt * (rb - ra)
    ramus &= ax >= 1.5  # symphyseal joint at the midline
    low_bone = head | neck | gt | shaft_top | cup | ischium | ramus
    # cancellous cores: surfaces in from each solid by ~2.5 mm
    low_core = ((d_head <= r_head - 2.5) | (perp <= 11.0) | (ellipsoid_field(xyz_r, troch + np.array([6, -4, 6]), (13, 16, 19)) < 0)
                | (ellipsoid_field(xyz_r, troch + np.array([2, 0, -30]), (12, 12, 27)) < 0)
                | ((d_head > r_head + 4) & (d_head <= r_head + 10.5) & (cosang > -0.05))
                | (ellipsoid_field(xyz_r, hc + np.array([-16, -34, -12]), (10, 15, 25)) < 0))

    # -- muscles: iliacus on the inner wing surface, gluteals outside the wing and behind the hip
    iliacus = (in_arc & (dist < -half) & (dist >= -half - 10 - 8 * u) & (theta > th_post + 0.15)
               & (z <= z_crest - 8))
    glute_band = ((theta >= th_post - 0.5) & (theta <= th_ant - 0.25) & (dist > half)
                  & (dist <= half + glut * (0.6 + 0.6 * u)) & (z <= z_crest - 5))
    y_post = body.yc - body.bc0
    gmax = ((z < -120) & (ax > 0.25 * ac) & (ax < hx + r_head + 35) & (y < hy - r_head - 4)
            & (y > y_post - 2) & (y < ys + 40))
    hip_muscle = (d_head <= r_head + 30) & (z < z_hip + r_head) & ~cup  # short rotators / obturator
    muscle = (iliacus | glute_band | gmax | hip_muscle) & cav

    fat = tissue == T.FAT
    tissue[muscle & fat] = T.MUSCLE
    bone = (wing | low_bone) & np.isin(tissue, PELVIS_INTO)
    core = (wing_core | (low_core & low_bone)) & bone
    tissue[bone] = T.CORTEX
    tissue[core] = T.BONE
    gap = roof_gap & (tissue == T.FAT)
    tissue[gap] = T.MUSCLE
    return {"iliac_crest_z_mm": round(float(z_crest), 1),
            "femoral_head_mm": [round(float(hx), 1), round(float(hy), 1), round(float(z_hip), 1)],
            "femoral_head_radius_mm": round(float(r_head), 1)}

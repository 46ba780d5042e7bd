"""Procedural abdominal CT phantoms with exact labels and findings (DESIGN.md section 3).

    case = generate_case(seed)                      # findings sampled from the seed
    case = generate_case(seed, findings, grid)      # findings imposed; same anatomy otherwise
    case.ct      (X, Y, Z) int16 HU          case.labels (X, Y, Z) uint8 (data_manifests/labels.yaml)
    case.affine  (4, 4) RAS+ voxel -> mm     case.meta   JSON-serialisable (volumes, HU, colon, ...)

Axes are (X, Y, Z) in RAS+: x toward the patient's right, y anterior, z superior (z = Z-1 is the
liver dome, z = 0 the pelvic floor); the default grid 128 x 128 x 80 at 3 x 3 x 5 mm spans
384 x 384 x 400 mm, centred at world (0, 0, 0). Everything is defined in mm, so any grid works.

Pipeline: habitus -> tissue map painted in priority order (body wall, lungs, skeleton, muscles,
vessels, colon + tumours, kidneys, liver, spleen, stomach, duodenum, pancreas, bladder, small
bowel; then pelvic bones and hip muscles into the unlabelled tissue left) -> labels and HU by table look-up -> smooth texture -> partial-volume blur -> correlated
noise of exactly NOISE_SIGMA_HU -> int16. The anatomy depends on the seed only: imposing other
findings (e.g. an enlarged spleen) changes that organ and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from shared.data import phantom_body as body_mod
from shared.data import phantom_colon as colon_mod
from shared.data import phantom_organs as organs
from shared.data.phantom_colon import colon_segment_map, site_of_point
from shared.data.phantom_shapes import Canvas, PhantomGrid
from shared.data.phantom_tissues import PHASE_INDEX, T, label_lut, sample_hu, texture_lut
from shared.findings import SITES, Findings, Tumor
from shared.labels import default_labels

__all__ = [
    "NOISE_SIGMA_HU", "NOISE_CORR_SIGMA_VOX", "BLUR_SIGMA_MM", "PhantomGrid", "PhantomCase",
    "Anatomy", "sample_findings", "generate_case", "build_anatomy", "render_ct",
    "colon_segment_map", "site_of_point",
]

log = logging.getLogger(__name__)

NOISE_SIGMA_HU = 12.0  # per-voxel std of the added noise (exact over the volume)
NOISE_CORR_SIGMA_VOX = (0.8, 0.8, 0.5)  # Gaussian correlation of the noise, voxels (X, Y, Z)
BLUR_SIGMA_MM = (1.2, 1.2, 1.8)  # partial-volume blur of the noiseless image, mm
HU_CLIP = (-1024, 3071)  # the range a CT scanner stores

# findings rates of sample_findings
TUMOUR_COUNT_P = (0.25, 0.55, 0.20)
TUMOUR_SIZE_MM = (20.0, 60.0)
P_SPLEEN_ENLARGED = 0.15
P_FATTY_LIVER = 0.20
P_NEPHRECTOMY = 0.08
P_BLADDER_DISTENDED = 0.15
P_PORTAL_VENOUS = 0.60


@dataclass
class PhantomCase:
    """One phantom: CT (X, Y, Z) int16 HU, labels (X, Y, Z) uint8, RAS+ affine, findings, meta."""

    ct: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    findings: Findings
    seed: int
    meta: dict = field(default_factory=dict)


@dataclass
class Anatomy:
    """The painted phantom before rendering: tissue ids (X, Y, Z) uint8 (phantom_tissues.T),
    HU per tissue and phase (N_TISSUES, 2), and meta."""

    tissue: np.ndarray
    hu: np.ndarray
    meta: dict


# ---------------------------------------------------------------------------------------------
def sample_findings(rng: np.random.Generator) -> Findings:
    """Random findings: 0/1/2 tumours (25/55/20 %) on distinct sites, 20-60 mm; enlarged spleen
    15 %, fatty liver 20 %, nephrectomy 8 % (one side), distended bladder 15 %, portal venous
    phase 60 % (else non-contrast; never 'unknown')."""
    n = int(rng.choice(3, p=TUMOUR_COUNT_P))
    sites = rng.choice(len(SITES), size=2, replace=False)[:n]
    sizes = np.round(rng.uniform(*TUMOUR_SIZE_MM, size=2))[:n]
    spleen = rng.uniform() < P_SPLEEN_ENLARGED
    fatty = rng.uniform() < P_FATTY_LIVER
    nephrectomy = rng.uniform() < P_NEPHRECTOMY
    left_side = rng.uniform() < 0.5
    distended = rng.uniform() < P_BLADDER_DISTENDED
    pv = rng.uniform() < P_PORTAL_VENOUS
    return Findings(
        tumors=tuple(Tumor(SITES[int(s)], float(z)) for s, z in zip(sites, sizes, strict=True)),
        spleen="enlarged" if spleen else "normal",
        liver="fatty" if fatty else "normal",
        kidney_left="absent" if nephrectomy and left_side else "present",
        kidney_right="absent" if nephrectomy and not left_side else "present",
        bladder="distended" if distended else "normal",
        phase="portal_venous" if pv else "non_contrast",
    )


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent generator per (seed, anatomical module) so modules do not shift each other."""
    return np.random.default_rng([int(seed), 0x9A27, stream])


def build_anatomy(seed: int, findings: Findings, grid: PhantomGrid = PhantomGrid(),
                  pelvis: bool = True) -> Anatomy:
    """Paint the tissue map of one case (priority = painting order) and collect its meta.

    pelvis=False leaves out the pelvic bones and hip muscles (painted last, into unlabelled
    tissue only, from their own random stream): the label map is identical either way.
    """
    canvas = Canvas(grid)
    body = body_mod.Body.sample(_rng(seed, 1))
    body_mod.paint_body(canvas, body)
    body_mod.paint_spine(canvas, body, _rng(seed, 2))
    body_mod.paint_ribs(canvas, body, _rng(seed, 3))
    body_mod.paint_muscles(canvas, body)
    vessels = body_mod.paint_vessels(canvas, body, _rng(seed, 4))

    line = colon_mod.colon_centreline(body, _rng(seed, 5))
    shapes = colon_mod.tumour_params(_rng(seed, 6))
    tumours = colon_mod.place_tumours(line, findings, shapes)
    for t in tumours:
        t["volume_ml"] = colon_mod.paint_tumour(canvas, t, shapes[t["site"]])
    colon_mod.paint_colon(canvas, line)

    present = {"left": findings.kidney_left == "present", "right": findings.kidney_right == "present"}
    kidneys = organs.paint_kidneys(canvas, body, _rng(seed, 7), present)
    liver = organs.paint_liver(canvas, body, _rng(seed, 8))
    spleen = organs.paint_spleen(canvas, body, _rng(seed, 9), findings.spleen == "enlarged")
    stomach = organs.paint_stomach(canvas, body, _rng(seed, 10))
    duodenum = organs.paint_duodenum(canvas, body, _rng(seed, 11), np.array(stomach["pylorus_mm"]))
    pancreas = organs.paint_pancreas(canvas, body, _rng(seed, 12), duodenum["head_mm"],
                                     vessels["splenic_hilum"])
    bladder = organs.paint_bladder(canvas, body, _rng(seed, 13), findings.bladder == "distended")
    ileocaecal = line["points"][0] + np.array([-0.2 * body.ac0, -5.0, 22.0])
    organs.paint_small_bowel(canvas, body, _rng(seed, 14), duodenum["dj_flexure_mm"], ileocaecal)
    pelvis_meta = body_mod.paint_pelvis(canvas, body, _rng(seed, 16)) if pelvis else {}

    hu = sample_hu(_rng(seed, 15), fatty_liver=findings.liver == "fatty")
    meta = {
        "habitus": {k: round(float(v), 1) for k, v in vars(body).items()},
        "target_volumes_ml": {"liver": liver["volume_ml"], "spleen": spleen["volume_ml"],
                              "stomach": stomach["volume_ml"], "pancreas": pancreas["volume_ml"],
                              "urinary_bladder": bladder["volume_ml"]},
        "spleen_enlargement_factor": spleen["enlargement_factor"],
        "kidneys": kidneys,
        "vessels": {"aorta_x_mm": round(vessels["aorta_x"], 1), "ivc_x_mm": round(vessels["ivc_x"], 1),
                    "aortic_bifurcation_z_mm": round(vessels["z_bifurcation"], 1)},
        "colon": colon_mod.colon_meta(line),
        "pelvis": pelvis_meta,
        "tumors": [{"site": t["site"], "size_mm": round(2 * t["radius"], 1),
                    "centre_mm": np.round(t["centre"], 1).tolist(),
                    "arclength_mm": round(float(t["arclength"]), 1),
                    "volume_ml": round(t["volume_ml"], 2)} for t in tumours],
    }
    return Anatomy(canvas.tissue, hu, meta)


def render_ct(tissue: np.ndarray, hu: np.ndarray, grid: PhantomGrid, rng: np.random.Generator,
              noise: bool = True) -> np.ndarray:
    """HU image (X, Y, Z) int16 from a tissue map and per-tissue HU (N_TISSUES,) of one phase.

    Smooth organ texture, partial-volume blur (BLUR_SIGMA_MM), then Gaussian-correlated noise
    rescaled to a per-voxel std of exactly NOISE_SIGMA_HU, rounded and clipped to HU_CLIP.
    """
    texture = _smooth_field(rng, grid.shape, factor=3, sigma=1.0)
    ct = hu[tissue] + texture_lut()[tissue] * texture  # (X, Y, Z) float32
    sigma_blur = [s / d for s, d in zip(BLUR_SIGMA_MM, grid.spacing, strict=True)]
    ct = ndimage.gaussian_filter(ct, sigma_blur, mode="nearest")
    if noise:
        ct += correlated_noise(rng, grid.shape)
    return np.clip(np.rint(ct), *HU_CLIP).astype(np.int16)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int],
                     sigma_hu: float = NOISE_SIGMA_HU,
                     corr_vox: tuple[float, float, float] = NOISE_CORR_SIGMA_VOX) -> np.ndarray:
    """Gaussian-filtered white noise (X, Y, Z) float32 rescaled to a std of exactly sigma_hu."""
    white = rng.standard_normal(shape, dtype=np.float32)
    n = ndimage.gaussian_filter(white, corr_vox, mode="wrap")
    n -= n.mean()
    return n * np.float32(sigma_hu / n.std())


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], factor: int,
                  sigma: float) -> np.ndarray:
    """Smooth random field (X, Y, Z) float32 with unit std: coarse noise, filtered, upsampled."""
    coarse = [max(2, -(-n // factor)) for n in shape]
    f = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma, mode="wrap")
    f = ndimage.zoom(f, [n / c for n, c in zip(shape, coarse, strict=True)], order=1, grid_mode=True,
                     mode="grid-wrap")[: shape[0], : shape[1], : shape[2]]
    return (f - f.mean()) / (f.std() + 1e-6)


def organ_volumes_ml(labels: np.ndarray, grid: PhantomGrid) -> dict[str, float]:
    """Volume (mL) of every label class (background excluded), from the label map."""
    table = default_labels()
    counts = np.bincount(labels.ravel(), minlength=table.num_classes)
    return {c.name: round(float(counts[c.id]) * grid.voxel_ml, 2) for c in table.classes[1:]}


def generate_case(seed: int, findings: Findings | None = None, grid: PhantomGrid = PhantomGrid(),
                  noise: bool = True, hu: np.ndarray | None = None) -> PhantomCase:
    """One phantom, deterministic per (seed, findings, grid, noise, hu).

    findings None -> sample_findings(np.random.default_rng(seed)). A findings phase of 'unknown'
    renders as non-contrast. noise=False gives the noiseless (blurred) image of the same case.
    hu (N_TISSUES, 2) replaces the case's own HU draw (e.g. `expected_hu`): same anatomy, texture
    and noise.
    """
    if findings is None:
        findings = sample_findings(np.random.default_rng(seed))
    anatomy = build_anatomy(seed, findings, grid)
    if hu is not None:
        hu = np.asarray(hu, dtype=np.float32)
        if hu.shape != anatomy.hu.shape:
            raise ValueError(f"hu must be (N_TISSUES, 2) = {anatomy.hu.shape}, got {hu.shape}")
        anatomy = replace(anatomy, hu=hu)
    phase = PHASE_INDEX.get(findings.phase, 0)
    ct = render_ct(anatomy.tissue, anatomy.hu[:, phase], grid, _rng(seed, 99), noise=noise)
    labels = label_lut()[anatomy.tissue]
    meta = dict(anatomy.meta)
    meta["volumes_ml"] = organ_volumes_ml(labels, grid)
    meta["hu"] = {t.name.lower(): round(float(anatomy.hu[t, phase]), 1) for t in T}
    meta["noise_sigma_hu"] = NOISE_SIGMA_HU if noise else 0.0
    meta["grid"] = {"shape": list(grid.shape), "spacing": list(grid.spacing)}
    return PhantomCase(ct=ct, labels=labels, affine=grid.affine(), findings=findings,
                       seed=int(seed), meta=meta)

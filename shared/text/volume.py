"""`findings_from_volume`: read the Findings back from a label volume (and its CT).

The inverse of the report -> anatomy direction, used by stage validation and the evaluator:
alignment = per-field agreement of `abstract_report(prompt)` and `findings_from_volume(output)`.

Tumour site: each tumour component touching the colon is placed in a colon frame built from the
colon ∪ tumour voxels in world coordinates: u = left-right position across the colon's extent
(-1 = patient's left edge, +1 = right edge) and h = height within the colon's craniocaudal
extent (0 = lowest point, the rectum's end; 1 = the top of the flexures). The colon's course
makes the segments separable in that frame: the ascending limb is the right column, the
descending the left column, the transverse the upper middle, the sigmoid the low middle/left
loop, and the rectum the lowest midline part. The thresholds (`SiteFrame`) are calibrated on
the phantom anatomy (shared/data/phantom_colon.py), whose tumours sit at least one radius away
from segment boundaries. A tumour component that does not touch the colon has no site.

Organ attributes: spleen enlarged and bladder distended from volumes; a kidney is absent when
no kidney tissue of at least `min_kidney_ml` lies on that side of the midline (decided in world
coordinates, not by label name); with the CT, contrast phase from the mean HU of the spleen and
kidneys (enhancing parenchyma) and fatty liver from the liver's mean HU for that phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from shared.findings import SITES, Findings, Tumor
from shared.labels import LabelTable, default_labels


@dataclass(frozen=True)
class SiteFrame:
    """Decision thresholds in the colon frame (u: -1 left .. +1 right; h: 0 bottom .. 1 top)."""

    ascending_u: float = 0.42  # right of this: ascending limb
    descending_u: float = -0.50  # left of this (and above pelvis_h): descending limb
    pelvis_h: float = 0.44  # below this: sigmoid or rectum
    rectum_h: float = 0.25  # below this: rectum


@dataclass(frozen=True)
class ReadbackConfig:
    frame: SiteFrame = field(default_factory=SiteFrame)
    min_tumor_ml: float = 0.5
    min_kidney_ml: float = 30.0
    spleen_enlarged_ml: float = 290.0  # phantom: normal 160-240, enlarged 2.1-2.9x
    bladder_distended_ml: float = 300.0  # phantom: normal 110-250, distended 360-580
    portal_venous_hu: float = 80.0  # spleen + kidney mean: NC <= 50, PV >= 110
    fatty_liver_hu: dict = field(default_factory=lambda: {"non_contrast": 45.0, "portal_venous": 88.0})
    erosion_iters: int = 1


def _world(idx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel indices (N, 3) -> world mm (N, 3)."""
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _eroded_mean(ct: np.ndarray, mask: np.ndarray, iters: int) -> float | None:
    if not mask.any():
        return None
    core = ndimage.binary_erosion(mask, iterations=iters) if iters else mask
    core = core if core.sum() >= 10 else mask
    return float(ct[core].mean())


def tumor_site(centre_mm: np.ndarray, colon_mm: np.ndarray, frame: SiteFrame = SiteFrame()) -> str:
    """Site of a tumour centre (3,) mm in the frame of colon ∪ tumour voxel positions (N, 3) mm."""
    x, z = colon_mm[:, 0], colon_mm[:, 2]
    u = (centre_mm[0] - (x.max() + x.min()) / 2) / max((x.max() - x.min()) / 2, 1e-6)
    h = (centre_mm[2] - z.min()) / max(z.max() - z.min(), 1e-6)
    if u > frame.ascending_u:
        return "ascending"
    if h < frame.rectum_h:
        return "rectum"
    if h < frame.pelvis_h:
        return "sigmoid"
    return "descending" if u < frame.descending_u else "transverse"


def findings_from_volume(
    labels: np.ndarray,
    affine: np.ndarray,
    ct: np.ndarray | None = None,
    table: LabelTable | None = None,
    config: ReadbackConfig = ReadbackConfig(),
) -> Findings:
    """Findings of a label volume (X, Y, Z) with its (4, 4) voxel->world affine (any orientation
    whose world frame is RAS+, as NIfTI's is). `ct`: the matching HU volume, for phase and
    fatty liver (without it: phase 'unknown', liver 'normal')."""
    table = table or default_labels()
    labels = np.asarray(labels)
    affine = np.asarray(affine, dtype=np.float64)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    ids = {name: table.id_of(name) for name in table.names}
    volume = lambda name: float((labels == ids[name]).sum()) * voxel_ml  # noqa: E731

    tumors = _tumors(labels, affine, ids, voxel_ml, config)
    kidney_left, kidney_right = _kidneys(labels, affine, ids, voxel_ml, config)
    phase, liver = "unknown", "normal"
    if ct is not None:
        ct = np.asarray(ct, dtype=np.float32)
        enh = [m for m in (_eroded_mean(ct, labels == ids[k], config.erosion_iters)
                           for k in ("spleen", "kidney_left", "kidney_right")) if m is not None]
        if enh:
            phase = "portal_venous" if np.mean(enh) >= config.portal_venous_hu else "non_contrast"
            liver_hu = _eroded_mean(ct, labels == ids["liver"], config.erosion_iters)
            if liver_hu is not None and liver_hu < config.fatty_liver_hu[phase]:
                liver = "fatty"
    return Findings(
        tumors=tuple(tumors),
        spleen="enlarged" if volume("spleen") > config.spleen_enlarged_ml else "normal",
        liver=liver,
        kidney_left=kidney_left,
        kidney_right=kidney_right,
        bladder="distended" if volume("urinary_bladder") > config.bladder_distended_ml else "normal",
        phase=phase,
    )


def _tumors(labels, affine, ids, voxel_ml, config) -> list[Tumor]:
    tumor_mask = labels == ids["colorectal_tumor"]
    if not tumor_mask.any():
        return []
    colon_mask = labels == ids["colon"]
    colon_mm = _world(np.argwhere(colon_mask | tumor_mask), affine)
    comps, n = ndimage.label(tumor_mask, structure=np.ones((3, 3, 3)))
    out = []
    for k in range(1, n + 1):
        comp = comps == k
        vol = float(comp.sum()) * voxel_ml
        if vol < config.min_tumor_ml:
            continue
        size = 2.0 * (3.0 * vol * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # equivalent diameter, mm
        touches = (ndimage.binary_dilation(comp, np.ones((3, 3, 3))) & colon_mask).any()
        site = None
        if touches:
            site = tumor_site(_world(np.argwhere(comp), affine).mean(0), colon_mm, config.frame)
        out.append(Tumor(site=site, size_mm=round(min(size, 999.0), 1)))
    return out


def _kidneys(labels, affine, ids, voxel_ml, config) -> tuple[str, str]:
    """('present'|'absent') for the left and right kidney, by side of the body midline."""
    kidney = np.isin(labels, [ids["kidney_left"], ids["kidney_right"]])
    if not kidney.any():
        return "absent", "absent"
    fg = np.argwhere(labels > 0)
    xs = _world(fg[:: max(1, len(fg) // 20000)], affine)[:, 0]
    midline = 0.5 * (xs.min() + xs.max())
    kx = _world(np.argwhere(kidney), affine)[:, 0]
    left = float((kx < midline).sum()) * voxel_ml
    right = float((kx >= midline).sum()) * voxel_ml
    state = lambda ml: "present" if ml >= config.min_kidney_ml else "absent"  # noqa: E731
    return state(left), state(right)


__all__ = ["ReadbackConfig", "SiteFrame", "findings_from_volume", "tumor_site", "SITES"]

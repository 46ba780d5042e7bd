"""Stage-2 evaluation metrics (pure functions on HU volumes and label volumes).

Definitions in `stage2_ct.evaluate` (DESIGN.md section 9): eroded organ masks, noise residuals and
their adjacent-slice correlation, organ level jitter along z, continuity (z-gradient), VAE round
trip RMSE, organ mean HU group errors. Volumes are (X, Y, Z) HU, batches (N, X, Y, Z).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from shared.data.transforms import hu_to_model, model_to_hu
from shared.labels import default_labels
from stage2_ct.harmonize import SOLID_ORGANS

SOLID = SOLID_ORGANS  # the solid organs the evaluation measures


def eroded(labels: np.ndarray, cid: int, iterations: int = 1) -> np.ndarray:
    """Binary mask of class `cid` eroded in 3D (3 x 3 x 3) and once more in-plane."""
    m = ndimage.binary_erosion(labels == cid, np.ones((3, 3, 3), bool), iterations=iterations)
    return ndimage.binary_erosion(m, np.ones((3, 3, 1), bool))


def noise_residual(vol: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    return vol - ndimage.gaussian_filter(vol, (sigma, sigma, 0))


def adjacent_corr(res: np.ndarray, mask: np.ndarray) -> float:
    both = mask[..., 1:] & mask[..., :-1]
    a, b = res[..., :-1][both], res[..., 1:][both]
    if a.size < 10:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def level_jitter(vol: np.ndarray, mask: np.ndarray, min_voxels: int = 30) -> float:
    """Mean |difference| (HU) of an organ's per-slice mean HU between adjacent slices (X, Y, Z),
    over slice pairs where both slices hold >= min_voxels of the mask; NaN without such pairs.
    The phantom's organ levels are constant along z (real ~1 HU: noise and texture only)."""
    n = mask.sum(axis=(0, 1))  # (Z,)
    means = np.where(n > 0, (vol * mask).sum(axis=(0, 1)) / np.maximum(n, 1), np.nan)
    ok = (n[1:] >= min_voxels) & (n[:-1] >= min_voxels)
    return float(np.abs(np.diff(means))[ok].mean()) if ok.any() else float("nan")


def z_gradient(vol: np.ndarray) -> float:
    body = (vol[..., 1:] > -500) & (vol[..., :-1] > -500)
    return float(np.abs(np.diff(vol, axis=-1))[body].mean())


@torch.no_grad()
def evaluate_vae(vae: torch.nn.Module, hu: torch.Tensor) -> tuple[dict[str, Any], np.ndarray]:
    """hu (N, X, Y, Z) int16 -> (RMSE dict over every slice of every case,
    reconstructions (N, X, Y, Z) float32 HU, each slice encoded and decoded on its own)."""
    se_body = se_soft = n_body = n_soft = 0.0
    recs, device = [], next(vae.parameters()).device
    for i in range(hu.shape[0]):
        x = hu[i].permute(2, 0, 1)[:, None].float().to(device)  # (Z, 1, X, Y)
        rec = vae.reconstruct_hu(x)
        ref = model_to_hu(hu_to_model(x))  # reference clipped to the model window
        se = (rec - ref) ** 2
        body, soft = ref > -500, (ref >= -150) & (ref <= 250)
        se_body += float(se[body].sum())
        n_body += float(body.sum())
        se_soft += float(se[soft].sum())
        n_soft += float(soft.sum())
        recs.append(rec[:, 0].permute(1, 2, 0).float().cpu().numpy())
    grid = torch.arange(-1000, 1001, dtype=torch.float64)
    round_trip = float((model_to_hu(hu_to_model(grid)) - grid).abs().max())
    res = {"rmse_body_hu": (se_body / n_body) ** 0.5, "rmse_soft_tissue_hu": (se_soft / n_soft) ** 0.5,
           "hu_round_trip_max_error": round_trip, "n_cases": int(hu.shape[0])}
    return res, np.stack(recs)


def _mean_finite(values: list[float]) -> float:
    """Mean of the finite values; NaN where there are none (no warning)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def volume_stats(volumes: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, dict[str, Any]]:
    """Continuity, adjacent-slice noise correlation, liver HU std and the level jitter along z
    (`level_jitter`) of the liver and of every solid organ, for each named set of volumes,
    averaged over its volumes; the eroded organ masks are built once for all sets.

    volumes {name: (N, X, Y, Z) HU}, labels (N, X, Y, Z) -> {name: {"z_gradient", "noise_corr",
    "liver_std", "liver_jitter", "organ_jitter": {organ: HU}}}."""
    table = default_labels()
    organs = [{name: eroded(lab, table.id_of(name)) for name in SOLID} for lab in labels]  # per case
    solids = [np.any(list(o.values()), axis=0) for o in organs]
    livers = [o["liver"] if o["liver"].sum() >= 20 else None for o in organs]
    out = {}
    for key, vols in volumes.items():
        zg = [z_gradient(v) for v in vols]
        corr = [adjacent_corr(noise_residual(v), solid) for v, solid in zip(vols, solids, strict=True)]
        std = [float(v[liver].std()) for v, liver in zip(vols, livers, strict=True) if liver is not None]
        jit = {name: _mean_finite([level_jitter(v, o[name]) for v, o in zip(vols, organs, strict=True)])
               for name in SOLID}
        out[key] = {"z_gradient": float(np.mean(zg)), "noise_corr": float(np.nanmean(corr)),
                    "liver_std": float(np.mean(std)) if std else float("nan"),
                    "liver_jitter": jit["liver"] if std else float("nan"), "organ_jitter": jit}
    return out


def organ_means(vols: list[np.ndarray], labels: np.ndarray) -> list[dict[str, float]]:
    """Mean HU of each volume in `vols` on the eroded solid organs of `labels` (masks built once;
    organs with < 20 eroded voxels left out) -> one {organ: HU} per volume."""
    table = default_labels()
    masks = {name: m for name in SOLID if (m := eroded(labels, table.id_of(name))).sum() >= 20}
    return [{name: float(v[m].mean()) for name, m in masks.items()} for v in vols]


def organ_group(phase: str, liver: str, organ: str) -> str:
    """The group an organ's mean HU is judged in: 'phase|fatty' for a fatty liver, else 'phase|normal'."""
    return f"{phase}|{'fatty' if liver == 'fatty' and organ == 'liver' else 'normal'}"


def organ_hu_errors(rows: list[tuple[str, str, float, float, float]]) -> dict[str, Any]:
    """Group errors of organ mean HU. rows: (organ, group, generated, real own draw, expectation)
    per case and organ (HU) -> {organ: {group: {n, gen, real, expectation, abs_error (gen vs
    expectation), abs_error_vs_own_draws, oracle_abs_error (expectation vs own draws)}}}."""
    out: dict[str, Any] = {}
    for organ in SOLID:
        groups: dict[str, list[tuple[float, float, float]]] = {}
        for o, grp, g, r, e in rows:
            if o == organ:
                groups.setdefault(grp, []).append((g, r, e))
        out[organ] = {}
        for grp, v in groups.items():
            g, r, e = (float(np.mean(col)) for col in zip(*v, strict=True))
            out[organ][grp] = {"n": len(v), "gen": g, "real": r, "expectation": e, "abs_error": abs(g - e),
                               "abs_error_vs_own_draws": abs(g - r), "oracle_abs_error": abs(e - r)}
    return out


def max_over_groups(organ_err: dict[str, Any], key: str) -> float:
    """Largest `key` (e.g. "abs_error") over every organ and group of `organ_hu_errors`'s output (HU)."""
    return max((e[key] for o in organ_err.values() for e in o.values()), default=float("nan"))

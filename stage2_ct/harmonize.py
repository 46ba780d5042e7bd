"""Organ level harmonisation along z: a mask-guided post-processing of generated volumes.

The slice LDM draws every slice's coarse intensities anew, so an organ's mean HU wanders from slice
to slice (the liver by ~5 HU between adjacent slices where the phantom's wanders by 1.5;
research/stage2_log.md "Organ level harmonisation"). `harmonize_levels` moves each labelled organ of each
slice by one offset towards a Gaussian-smoothed (along z) course of that organ's per-slice mean:

    m_k = mean HU of the organ's interior in slice k                      (n_k voxels)
    t_k = sum_j g(k - j) n_j m_j / sum_j g(k - j) n_j                    (g: Gaussian, sigma slices)
    d_k = (t_k - m_k) * n_k / (n_k + n_0)                                (n_0: shrinks noisy small slices)
    hu[.., k] += d_k * w_k                                               (w_k: organ mask, feathered edge)

Texture, noise and everything outside the organs are left as they are; the volume mean of an organ
moves little (the offsets sum to ~0 over its voxels). An organ whose level truly changes slowly
along z keeps that change (sigma sets the scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from shared.labels import default_labels

SOLID_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "pancreas")


def organ_ids(num_classes: int, names: Sequence[str] = SOLID_ORGANS) -> list[int]:
    """Label ids of `names` in shared.labels.default_labels (the table the stage-2 masks use);
    a model with another number of classes is refused by name."""
    table = default_labels()
    if table.num_classes != num_classes:
        raise ValueError(f"level harmonisation needs the default label table ({table.num_classes} classes); "
                         f"the model has {num_classes}: pass level_sigma=0")
    return [table.id_of(n) for n in names]


def gaussian_kernel(sigma: float, n: int) -> torch.Tensor:
    """(2r + 1,) float64 Gaussian weights with r = min(ceil(3 sigma), n - 1), unnormalised (peak 1)."""
    r = max(0, min(math.ceil(3 * sigma), n - 1))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    return torch.exp(-0.5 * (x / sigma) ** 2)


def smooth_weighted(values: torch.Tensor, weights: torch.Tensor, sigma: float) -> torch.Tensor:
    """Weighted Gaussian smoothing along the last axis: sum_j g(k - j) w_j v_j / sum_j g(k - j) w_j.

    values, weights (N, Z) -> (N, Z); sigma in samples, math.inf = the weighted mean of each row.
    Rows or positions without weight in reach give NaN."""
    if math.isinf(sigma):
        num, den = (weights * values).sum(-1, keepdim=True), weights.sum(-1, keepdim=True)
        return (num / den).expand_as(values)
    k = gaussian_kernel(sigma, values.shape[-1]).to(values)[None, None]  # (1, 1, 2r + 1)
    r = k.shape[-1] // 2
    num = F.conv1d((weights * values)[:, None], k, padding=r)[:, 0]
    den = F.conv1d(weights[:, None], k, padding=r)[:, 0]
    return num / den


def _to_slices(x: torch.Tensor) -> torch.Tensor:
    """(B, X, Y, Z) -> (B * Z, 1, X, Y): one 2D image per axial slice, for the in-plane pools."""
    b, nx, ny, nz = x.shape
    return x.permute(0, 3, 1, 2).reshape(b * nz, 1, nx, ny)


def _from_slices(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of `_to_slices` for a (B, X, Y, Z) shape."""
    b, nx, ny, nz = shape
    return y.reshape(b, nz, nx, ny).permute(0, 2, 3, 1)


def organ_slice_means(hu: torch.Tensor, organ: torch.Tensor, erode: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice mean HU of an organ's interior: the mask eroded in-plane by a (2 erode + 1)^2
    square and by one slice along z (the first and last slice of the volume keep their voxels).

    hu (B, X, Y, Z) HU, organ (B, X, Y, Z) bool -> (means (B, Z) with 0 where empty, voxel counts (B, Z))."""
    outside = _to_slices(~organ).to(hu.dtype)
    interior = _from_slices(F.max_pool2d(outside, 2 * erode + 1, stride=1, padding=erode) == 0, organ.shape)
    interior[..., 1:] &= organ[..., :-1]  # and the organ in both neighbouring slices
    interior[..., :-1] &= organ[..., 1:]
    n = interior.sum((1, 2)).to(hu.dtype)  # (B, Z)
    total = (hu * interior).sum((1, 2))
    return total / n.clamp(min=1), n


def _box(mask: torch.Tensor, margin: int) -> tuple[slice, ...] | None:
    """Index of the in-plane bounding box of mask (B, X, Y, Z) grown by margin pixels; None if empty."""
    rows, cols = mask.any(dim=(0, 2, 3)), mask.any(dim=(0, 1, 3))
    if not rows.any():
        return None
    (x0, x1), (y0, y1) = ((int(i[0]), int(i[-1])) for i in (rows.nonzero()[:, 0], cols.nonzero()[:, 0]))
    return (slice(None), slice(max(0, x0 - margin), x1 + margin + 1), slice(max(0, y0 - margin), y1 + margin + 1))


def harmonize_levels(hu: torch.Tensor, labels: torch.Tensor, class_ids: Sequence[int], sigma: float = 3.0,
                     prior_voxels: float = 16.0, erode: int = 2) -> torch.Tensor:
    """Organ levels steadied along z (module docstring).

    Args:
        hu: (B, X, Y, Z) HU.
        labels: (B, X, Y, Z) integer labels on the same grid (axial slice k = [..., k]).
        class_ids: the labels to steady (homogeneous organs; not gas-filled ones, not tumours).
        sigma: Gaussian width along z in slices; math.inf = one level per organ and volume.
        prior_voxels: n_0, the interior size at which a slice's own mean gets half weight.
        erode: in-plane erosion (pixels) of the region each slice's mean is taken on: the rim,
            where a label and the tissue disagree, stays out of it.

    Returns:
        (B, X, Y, Z) HU of hu's dtype, clipped to hu's range [-1000, 1000].
    """
    if hu.shape != labels.shape or hu.ndim != 4:
        raise ValueError(f"hu and labels must both be (B, X, Y, Z), got {tuple(hu.shape)} and {tuple(labels.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 slices (math.inf: one level per organ), got {sigma}")
    if prior_voxels < 0:
        raise ValueError(f"prior_voxels must be >= 0, got {prior_voxels}")
    x = hu.to(torch.promote_types(hu.dtype, torch.float32), copy=True)  # float64 stays (tests); MPS has no float64
    for cid in class_ids:
        box = _box(labels == cid, margin=erode + 2)  # the organ's in-plane bounding box: 5-20x less work
        if box is None:
            continue
        organ, xc = labels[box] == cid, x[box]  # (B, x, y, Z); xc a view of x
        means, n = organ_slice_means(xc, organ, erode)  # (B, Z)
        target = smooth_weighted(means, n, sigma)
        shift = torch.where(n > 0, (target - means) * n / (n + prior_voxels), torch.zeros_like(means))
        # feathered weight: 1 inside, the 3 x 3 in-plane fraction of organ pixels at its edge
        m = _to_slices(organ).to(x.dtype)
        w = _from_slices(m * F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False), organ.shape)
        xc += w * shift[:, None, None, :]
    return x.clamp(-1000.0, 1000.0).to(hu.dtype)

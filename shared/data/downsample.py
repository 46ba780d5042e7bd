"""Label volumes between grids: area pooling with tumour priority, and probability upsampling.

Plain nearest-neighbour downsampling erases small tumours; instead each coarse cell gets the
per-class area fractions of the fine voxels it covers, and a cell with at least
`priority_threshold` of a priority class (the tumour) takes that class (DESIGN.md section 6).
Works for any number of spatial dims (torch area interpolation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def label_fractions(
    labels: torch.Tensor | np.ndarray, out_shape: Sequence[int], num_classes: int
) -> torch.Tensor:
    """Per-class area fractions on a coarser grid.

    labels: (*S) or (B, *S) integer class ids; returns float32 (K, *out) or (B, K, *out),
    summing to 1 over K.
    """
    t = torch.as_tensor(labels).long()
    spatial = len(out_shape)
    batched = t.ndim == spatial + 1
    if not batched:
        t = t[None]
    if t.ndim != spatial + 1:
        raise ValueError(f"labels of shape {tuple(t.shape)} do not match out_shape {tuple(out_shape)}")
    if int(t.min()) < 0 or int(t.max()) >= num_classes:
        raise ValueError(f"label values must lie in [0, {num_classes - 1}], got [{int(t.min())}, {int(t.max())}]")
    in_shape = tuple(t.shape[1:])
    if all(i % o == 0 for i, o in zip(in_shape, out_shape, strict=True)):
        frac = _block_fractions(t, tuple(out_shape), num_classes)
    else:  # non-integer factors: area interpolation of the one-hot volume
        onehot = F.one_hot(t, num_classes).movedim(-1, 1).float()  # (B, K, *S)
        frac = F.interpolate(onehot, size=tuple(out_shape), mode="area")  # (B, K, *out)
    return frac if batched else frac[0]


def _block_fractions(t: torch.Tensor, out_shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """Exact area fractions for integer factors by counting labels per cell (no one-hot)."""
    b = t.shape[0]
    factors = [i // o for i, o in zip(t.shape[1:], out_shape, strict=True)]
    # cell index of every fine voxel, then one bincount over (batch, cell, class)
    dev = t.device
    cell = torch.zeros((), dtype=torch.long, device=dev)
    for d, (o, f) in enumerate(zip(out_shape, factors, strict=True)):
        idx = torch.arange(o * f, device=dev) // f  # fine -> coarse index along dim d
        shape = [1] * len(out_shape)
        shape[d] = -1
        cell = cell * o + idx.view(shape)
    n_cells = int(torch.tensor(out_shape).prod())
    key = (torch.arange(b, device=dev).view(-1, *[1] * len(out_shape)) * n_cells + cell) * num_classes + t
    counts = torch.bincount(key.flatten(), minlength=b * n_cells * num_classes)
    frac = counts.view(b, *out_shape, num_classes).movedim(-1, 1).float()
    return frac / float(torch.tensor(factors).prod())


def downsample_labels(
    labels: torch.Tensor | np.ndarray,
    out_shape: Sequence[int],
    num_classes: int,
    priority_ids: Sequence[int] = (),
    priority_threshold: float = 0.25,
) -> torch.Tensor:
    """Coarse labels: argmax of area fractions, priority classes kept where they cover enough.

    labels: (*S) or (B, *S); returns int64 of shape (*out) or (B, *out).
    """
    frac = label_fractions(labels, out_shape, num_classes)
    cls_dim = 0 if frac.ndim == len(out_shape) + 1 else 1
    out = frac.argmax(dim=cls_dim)
    for pid in priority_ids:  # later ids in the list win ties between priority classes
        keep = frac.select(cls_dim, pid) >= priority_threshold
        out = torch.where(keep, torch.full_like(out, pid), out)
    return out


def upsample_probs(probs: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """Class probabilities (B, K, *S) -> (B, K, *out) by (tri)linear interpolation.

    Labels are the argmax of the result (DESIGN.md section 8): smoother than nearest.
    """
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[probs.ndim - 2]
    return F.interpolate(probs.float(), size=tuple(out_shape), mode=mode, align_corners=False)

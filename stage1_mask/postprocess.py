"""Optional clean-up of sampled label volumes: small islands -> their neighbours' class.

A categorical sampler leaves isolated voxels ("speckle") where its last steps were unsure. Like
nnU-Net's connected-component post-processing, `remove_islands` keeps the largest connected
component of every class whatever its size (a small tumour survives) and gives every other
component smaller than `min_voxels` to the most frequent class around it. The evaluation reports
metrics with and without it (stage1_mask.evaluate --clean-min-voxels). `labels_from_probs` is
the default way from `sample_masks` output to label volumes (argmax, then this clean-up).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["labels_from_probs", "remove_islands"]

_CONN = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def remove_islands(labels: np.ndarray, min_voxels: int = 8, max_rounds: int = 4) -> np.ndarray:
    """labels (X, Y, Z) int -> a copy where, per class, every connected component except the
    largest with fewer than `min_voxels` voxels takes the majority class of its 3x3x3
    neighbourhood (voxels being reassigned do not vote). Background islands are treated alike."""
    if labels.ndim != 3:
        raise ValueError(f"labels must be (X, Y, Z), got shape {labels.shape}")
    out = labels.copy()
    num_classes = int(out.max()) + 1
    for _ in range(max_rounds):
        small = np.zeros(out.shape, dtype=bool)
        for k in range(num_classes):
            comp, n = ndimage.label(out == k, structure=_CONN)
            if n < 2:
                continue
            sizes = np.bincount(comp.ravel())[1:]  # (n,)
            drop = sizes < min_voxels
            drop[np.argmax(sizes)] = False  # the largest component always stays
            if drop.any():
                small |= np.isin(comp, np.flatnonzero(drop) + 1)
        if not small.any():
            break
        votes = np.stack([ndimage.uniform_filter(((out == k) & ~small).astype(np.float32), 3, mode="constant")
                          for k in range(num_classes)])  # (K, X, Y, Z) neighbour shares
        has_vote = votes.sum(0) > 0
        fill = small & has_vote
        out[fill] = votes.argmax(0)[fill]
    return out


def labels_from_probs(probs: torch.Tensor, min_voxels: int = 8) -> np.ndarray:
    """`sample_masks` probabilities (B, K, X, Y, Z) -> label volumes (B, X, Y, Z) uint8: argmax,
    then `remove_islands(min_voxels)` per volume (0 = argmax only)."""
    if probs.ndim != 5:
        raise ValueError(f"probs must be (B, K, X, Y, Z), got shape {tuple(probs.shape)}")
    labels = probs.argmax(1).to(torch.uint8).cpu().numpy()
    if min_voxels <= 0:
        return labels
    return np.stack([remove_islands(m, min_voxels) for m in labels])

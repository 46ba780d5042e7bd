"""Tumour size control at sampling time: the report gives each tumour's diameter, so the sampler
knows how many voxels the tumour class should take.

At every reverse step the tumour logit of each sample is shifted by one scalar delta_b (the same
for all voxels) so that the expected tumour voxel count of the x0 prediction equals the reported
volume:

    sum_v sigmoid(l_tumour(v) - logsumexp_{k != tumour} l_k(v) + delta_b) = n*_b

Where the tumour goes still comes from the network (the ranking of voxels is unchanged); only
how much of its tumour evidence becomes tumour is set by the report. This replaces the global
`prior_correction` for the tumour class (whose one strength for every prompt either inflated
tumours ~8x or made them vanish). Samples without a reported size are left alone.

With two or more reported tumours a global count lets the strongest site take all the volume
(the second tumour vanished in 18 of 20 two-tumour test prompts). Mode "per_tumour" therefore
splits the candidate voxels (the 3 n* most tumour-like) into connected components and gives the
m strongest components (by tumour probability mass) one reported tumour each, largest size to
the largest mass, each with its own shift; elsewhere the tumour loses. With fewer components
than tumours (early, noisy steps) it falls back to the global count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from shared.findings import Findings
from shared.text.lexicon import abstract_report

__all__ = ["target_tumor_voxels", "match_class_volume"]


def target_tumor_voxels(summaries: Sequence[str | Findings], spacing_mm: Sequence[float]) -> torch.Tensor:
    """(B, M) float64 voxel counts of each reported tumour (sphere of the stated diameter) on a
    grid of `spacing_mm`, largest first, NaN-padded to the most tumours of the batch; a row is
    all NaN where the text states no tumour or a tumour without size. `.nansum(1)` = total."""
    voxel_mm3 = math.prod(float(s) for s in spacing_mm)
    rows = []
    for s in summaries:
        f = s if isinstance(s, Findings) else abstract_report(s)
        sizes = [t.size_mm for t in f.tumors]
        if not sizes or any(d is None for d in sizes):
            rows.append([])
        else:
            rows.append(sorted((math.pi / 6.0 * float(d) ** 3 / voxel_mm3 for d in sizes), reverse=True))
    m = max(1, *(len(r) for r in rows))
    return torch.tensor([r + [math.nan] * (m - len(r)) for r in rows], dtype=torch.float64)


def match_class_volume(logits: torch.Tensor, class_id: int, target: torch.Tensor,
                       mode: str = "expected", iters: int = 40, max_shift: float = 30.0) -> torch.Tensor:
    """Shift logits[:, class_id] per sample so that its voxel count equals `target`.

    logits: (B, K, *S) x0 logits; target: (B,) voxel counts or (B, M) per object (NaN-padded,
    largest first; the modes but "per_tumour" use the row sum), NaN = leave the sample alone.
    mode "expected": the expected count sum_v p(class | v) (bisection on delta in
    [-max_shift, max_shift]; the count is increasing in delta); "argmax": the number of voxels
    where the class wins (delta puts the threshold between the n-th and (n+1)-th largest margin);
    "per_tumour": "argmax" per connected component, one component per object (module docstring).
    Returns new logits (same shape; float32, or float64 for float64 input).
    """
    b = logits.shape[0]
    if target.dim() == 1:
        target = target[:, None]
    if target.dim() != 2 or target.shape[0] != b:
        raise ValueError(f"target has shape {tuple(target.shape)}, expected ({b},) or ({b}, M)")
    lf = logits.float().flatten(2)  # (B, K, V)
    others = torch.cat([lf[:, :class_id], lf[:, class_id + 1:]], dim=1)
    sizes = target.to(logits.device, torch.float32)  # (B, M)
    goal = torch.where(sizes.isnan().all(1), torch.full_like(sizes[:, 0], math.nan), sizes.nansum(1))
    if mode in ("argmax", "per_tumour"):  # margin over the best other class: the class wins where > 0
        margin = lf[:, class_id] - others.amax(1)  # (B, V)
        n = goal.nan_to_num(0).round().long().clamp(1, margin.shape[1] - 1)  # (B,)
        top = margin.topk(int(n.max()) + 1, dim=1).values  # (B, n_max + 1) descending
        pair = top.gather(1, torch.stack([n - 1, n], 1))  # n-th and (n+1)-th largest
        delta = torch.where(torch.isnan(goal), torch.zeros_like(goal), -pair.mean(1))  # (B,)
        if mode == "per_tumour":
            field = delta[:, None].expand_as(margin).clone()  # (B, V)
            for i in range(b):
                per = _per_component_shift(margin[i], sizes[i], logits.shape[2:])
                if per is not None:
                    field[i] = per
            return _shift(logits, class_id, field)
        return _shift(logits, class_id, delta)
    if mode != "expected":
        raise ValueError(f"mode must be 'expected', 'argmax' or 'per_tumour', got {mode!r}")
    margin = lf[:, class_id] - torch.logsumexp(others, dim=1)  # (B, V): p = sigmoid(margin)
    lo = torch.full((b,), -max_shift, device=margin.device)
    hi = torch.full((b,), max_shift, device=margin.device)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        count = torch.sigmoid(margin + mid[:, None]).sum(1)
        too_many = count > goal
        hi = torch.where(too_many, mid, hi)
        lo = torch.where(too_many, lo, mid)
    delta = torch.where(torch.isnan(goal), torch.zeros_like(lo), 0.5 * (lo + hi))  # (B,)
    return _shift(logits, class_id, delta)


def _per_component_shift(margin: torch.Tensor, sizes: torch.Tensor,
                         shape: Sequence[int]) -> torch.Tensor | None:
    """Per-voxel shift (V,) giving the m components of the candidate set (the 3 n* voxels of
    largest margin, 26-connected) with the most tumour mass sizes[0..m-1] voxels each, and
    nothing elsewhere; None where m < 2 or fewer components than objects."""
    sizes = sizes[~sizes.isnan()].round().clamp(min=1).long()  # largest first
    m, v = len(sizes), margin.numel()
    if m < 2:
        return None
    k = min(v - 1, int(3 * sizes.sum()))
    cand = margin >= margin.topk(k).values[-1]
    labels, n = ndimage.label(cand.reshape(*shape).cpu().numpy(), structure=np.ones((3,) * len(shape)))
    if n < m:
        return None
    labels = torch.from_numpy(labels).to(margin.device).flatten()  # (V,) 0 = not a candidate
    mass = torch.zeros(n + 1, device=margin.device).index_add_(0, labels, torch.sigmoid(margin))[1:]
    field = torch.full_like(margin, -float(margin.max()) - 1.0)  # the class loses everywhere ...
    for size, comp in zip(sizes.tolist(), mass.argsort(descending=True)[:m].tolist(), strict=True):
        inside = labels == comp + 1  # ... but in the chosen components, `size` voxels win
        mc = margin[inside]
        if size >= len(mc):
            field[inside] = -float(mc.min()) + 1e-3
        else:
            top = mc.topk(size + 1).values
            field[inside] = -0.5 * float(top[-2] + top[-1])
    return field


def _shift(logits: torch.Tensor, class_id: int, delta: torch.Tensor) -> torch.Tensor:
    """logits (B, K, *S) with delta (B,) or a per-voxel field (B, V) added to class `class_id`
    (in at least float32: bf16 would round the shift and break the count)."""
    out = logits.to(torch.promote_types(logits.dtype, torch.float32)).clone()
    out[:, class_id] += delta.reshape(delta.shape[0], *([1] * (logits.dim() - 2)) if delta.dim() == 1
                                      else logits.shape[2:]).to(logits.dtype)
    return out

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from shared.findings import Findings
from shared.text.lexicon import abstract_report

__all__ = ["target_tumor_voxels", "match_class_volume"]


def target_tumor_voxels(summaries: Sequence[str | Findings], spacing_mm: Sequence[float]) -> torch.Tensor:
    """(B,) float64 voxel count of the reported tumours (sum of sphere volumes of the stated
    diameters) on a grid of `spacing_mm`; NaN where the text states no tumour or no size."""
    voxel_mm3 = math.prod(float(s) for s in spacing_mm)
    out = []
    for s in summaries:
        f = s if isinstance(s, Findings) else abstract_report(s)
        sizes = [t.size_mm for t in f.tumors]
        if not sizes or any(d is None for d in sizes):
            out.append(math.nan)
        else:
            out.append(sum(math.pi / 6.0 * float(d) ** 3 for d in sizes) / voxel_mm3)
    return torch.tensor(out, dtype=torch.float64)


def match_class_volume(logits: torch.Tensor, class_id: int, target: torch.Tensor,
                       mode: str = "expected", iters: int = 40, max_shift: float = 30.0) -> torch.Tensor:
    """Shift logits[:, class_id] per sample so that its voxel count equals `target`.

    logits: (B, K, *S) x0 logits; target: (B,) voxel counts, NaN = leave the sample as it is.
    mode "expected": the expected count sum_v p(class | v) (bisection on delta in
    [-max_shift, max_shift]; the count is increasing in delta); "argmax": the number of voxels
    where the class wins (delta puts the threshold between the n-th and (n+1)-th largest margin).
    Returns new logits (same shape and dtype).
    """
    b = logits.shape[0]
    if target.shape != (b,):
        raise ValueError(f"target has shape {tuple(target.shape)}, expected ({b},)")
    lf = logits.float().flatten(2)  # (B, K, V)
    others = torch.cat([lf[:, :class_id], lf[:, class_id + 1:]], dim=1)
    goal = target.to(logits.device, torch.float32)
    if mode == "argmax":  # margin over the best other class: the class wins where it is > 0
        margin = lf[:, class_id] - others.amax(1)  # (B, V)
        n = goal.nan_to_num(0).round().long().clamp(1, margin.shape[1] - 1)  # (B,)
        top = margin.topk(int(n.max()) + 1, dim=1).values  # (B, n_max + 1) descending
        pair = top.gather(1, torch.stack([n - 1, n], 1))  # n-th and (n+1)-th largest
        delta = torch.where(torch.isnan(goal), torch.zeros_like(goal), -pair.mean(1))
        return _shift(logits, class_id, delta)
    if mode != "expected":
        raise ValueError(f"mode must be 'expected' or 'argmax', got {mode!r}")
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


def _shift(logits: torch.Tensor, class_id: int, delta: torch.Tensor) -> torch.Tensor:
    """logits (B, K, *S) with delta (B,) added to class `class_id`."""
    out = logits.clone()
    out[:, class_id] += delta.view(-1, *([1] * (logits.dim() - 2))).to(logits.dtype)
    return out

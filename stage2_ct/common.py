"""Small pieces both stage-2 LightningModules use: NaN guard, LR schedule, HU error metrics."""

from __future__ import annotations

import math

import torch

from shared.data.transforms import model_to_hu

SOFT_TISSUE_HU = (-150.0, 250.0)
BODY_HU = -500.0  # voxels above this (in the reference) count as inside the body


class NonFiniteLossError(RuntimeError):
    """Training produced NaN / inf; the message names the step."""


def check_finite(loss: torch.Tensor, step: int, what: str = "train/loss") -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{what} is {float(loss)} at global step {step}: stopping (lower the learning rate, "
            "check the data, or resume from the last good checkpoint)"
        )


def warmup_cosine(step: int, warmup: int, total: int | None, floor: float = 0.1) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `floor` at `total` (constant if None)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if not total or total <= warmup:
        return 1.0
    p = min(1.0, (step - warmup) / (total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def hu_errors(x_rec: torch.Tensor, x_ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Squared-error sums and counts (HU^2) inside the body and on soft tissue of the reference.

    x_rec, x_ref: model space (B, 1, H, W). Sums so that callers can aggregate over batches.
    """
    hu_rec, hu_ref = model_to_hu(x_rec.float()), model_to_hu(x_ref.float())
    se = (hu_rec - hu_ref) ** 2
    body = hu_ref > BODY_HU
    soft = (hu_ref >= SOFT_TISSUE_HU[0]) & (hu_ref <= SOFT_TISSUE_HU[1])
    return {"body_se": se[body].sum(), "body_n": body.sum(), "soft_se": se[soft].sum(),
            "soft_n": soft.sum(), "all_se": se.sum(), "all_n": torch.tensor(se.numel())}

"""Exponential moving average of a module's weights with warm-up.

decay_n = min(decay, (1 + n) / (10 + n)) after n updates (warm-up as in TF's
ExponentialMovingAverage with num_updates), so early averages are not dominated by the init.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, decay: float = 0.999) -> float:
    """Warm-up decay after `step` updates."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameters and floating buffers."""
    ema_p = [p for p in ema.parameters()]
    model_p = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)

"""The one reverse-diffusion loop used by validation and the pipelines, with classifier-free
guidance (Ho & Salimans 2022) on the model output.

CFG convention: `out = out_uncond + w (out_cond - out_uncond)` applied to what the network
returns (x0 LOGITS for the categorical process, eps / v / x0 for the Gaussian one), before the
scheduler's `step`. w = 1 is the conditional model, w = 0 the unconditional one. With
`batch_cfg=True` the conditional and unconditional inputs go through ONE forward of batch 2B
(first half conditional, second half unconditional).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from shared.diffusion.protocol import Generators, Scheduler

__all__ = ["cfg_combine", "guided_output", "sample_loop"]

log = logging.getLogger(__name__)

ModelFn = Callable[..., torch.Tensor]  # model_fn(x (B, C, *S), t (B,) int64, **cond) -> (B, C', *S)


def cfg_combine(out_cond: torch.Tensor, out_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: out_u + w (out_c - out_u)."""
    return out_uncond + w * (out_cond - out_uncond)


def _cat_kwargs(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    if a.keys() != b.keys():
        raise ValueError(f"cond and uncond need the same keys, got {sorted(a)} vs {sorted(b)}")
    out = {}
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, torch.Tensor):
            if va.shape != vb.shape:
                raise ValueError(f"cond[{k!r}] {tuple(va.shape)} != uncond[{k!r}] {tuple(vb.shape)}")
            out[k] = torch.cat([va, vb], dim=0)
        elif va is None and vb is None:
            out[k] = None
        else:
            raise TypeError(f"cond/uncond value {k!r} must be tensors with a batch dim or None")
    return out


def guided_output(
    model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor, guidance: float = 1.0,
    cond: Mapping[str, Any] | None = None, uncond: Mapping[str, Any] | None = None,
    batch_cfg: bool = True,
) -> torch.Tensor:
    """The (guided) model output at x (B, C, *S), t (B,).

    `cond` / `uncond`: keyword inputs of model_fn for the two branches (e.g. `context`,
    `context_mask`), each tensor with batch dim B. Without `uncond`, or at guidance 1, a single
    conditional pass; at guidance 0 a single unconditional pass.
    """
    cond = dict(cond or {})
    if uncond is None or guidance == 1.0:
        return model_fn(x, t, **cond)
    if guidance == 0.0:
        return model_fn(x, t, **dict(uncond))
    if batch_cfg:
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **_cat_kwargs(cond, uncond))
        out_c, out_u = out.chunk(2, dim=0)
    else:
        out_c, out_u = model_fn(x, t, **cond), model_fn(x, t, **dict(uncond))
    return cfg_combine(out_c, out_u, guidance)


@torch.no_grad()
def sample_loop(
    model_fn: ModelFn,
    scheduler: Scheduler,
    x_T: torch.Tensor,
    generator: Generators = None,
    guidance: float = 1.0,
    cond: Mapping[str, Any] | None = None,
    uncond: Mapping[str, Any] | None = None,
    num_inference_steps: int | None = None,
    batch_cfg: bool = True,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
    output_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the reverse process from x_T (B, C, *S) through `scheduler.timesteps`.

    Args:
        model_fn: model_fn(x, t, **cond) -> model output (what `scheduler.step` expects).
        scheduler: a `Scheduler`; `set_timesteps(num_inference_steps)` is called if given.
        generator: drives every random draw of the sampler (reproducible runs).
        guidance, cond, uncond, batch_cfg: classifier-free guidance, see `guided_output`.
        callback: called as callback(i, t, x_prev, x0_pred) after each step.
        output_fn: applied to the guided model output before each step (e.g. a constraint on
            the x0 logits, `stage1_mask.size.match_class_volume`).

    Returns:
        (x, x0_pred) after the last step: the clean sample (one-hot for the categorical
        process) and the last x0 prediction (class probabilities (B, K, *S) for categorical).
    """
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    x, x0_pred = x_T, x_T
    n = len(scheduler.timesteps)
    for i, t in enumerate(scheduler.timesteps.tolist()):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = guided_output(model_fn, x, t_batch, guidance, cond, uncond, batch_cfg)
        if output_fn is not None:
            out = output_fn(out)
        x, x0_pred = scheduler.step(out, t, x, generator=generator)
        if callback is not None:
            callback(i, t, x, x0_pred)
        log.debug("sample_loop step %d/%d t=%d", i + 1, n, t)
    return x, x0_pred

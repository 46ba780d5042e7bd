"""The one sampling protocol both noise processes implement (diffusers-style).

A scheduler never calls the network: `sample_loop` (shared/diffusion/sampling.py) evaluates
the model and hands its output to `step`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scheduler(Protocol):
    """Noise process + sampler.

    Attributes:
        num_train_timesteps: T; training timesteps are 0-indexed, t in [0, T-1].
        timesteps: descending int64 tensor (n,) set by `set_timesteps(n)`, values in [0, T-1],
            last entry is the step that returns the clean sample.
    """

    num_train_timesteps: int
    timesteps: torch.Tensor

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Choose the n sampling timesteps (descending, unique)."""
        ...

    def step(
        self,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from `sample` = x_t to x_prev (the next entry of `timesteps`, or the
        clean data after the last one). Returns (prev_sample, x0_pred)."""
        ...

    def init_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, **kw
    ) -> torch.Tensor:
        """A draw of x_{T-1} (the prior) of `shape`."""
        ...

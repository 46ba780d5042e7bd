"""The one sampling protocol both noise processes implement (diffusers-style).

A scheduler never calls the network: `sample_loop` (shared/diffusion/sampling.py) evaluates
the model and hands its output to `step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Union, runtime_checkable

import torch

from shared.diffusion.schedules import make_betas, make_timesteps

Generators = Union[torch.Generator, Sequence[torch.Generator], None]
"""One generator for the whole batch, or one per sample (row i of every draw comes from
generator i, so a sample's draws do not depend on the batch it runs in), or None (global RNG)."""


def random_draw(kind: str, shape: tuple[int, ...], generator: Generators,
                device: torch.device | str | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.randn (kind "normal") or torch.rand ("uniform") of `shape`, drawn on the generator's
    device and moved to `device`: a CPU generator drives CUDA sampling too, and one seed gives the
    same draws on every device. A sequence of generators draws row i of dim 0 from generator i."""
    fn = {"normal": torch.randn, "uniform": torch.rand}[kind]
    if generator is None or isinstance(generator, torch.Generator):
        src = generator.device if generator is not None else device
        return fn(shape, generator=generator, device=src, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a draw of {shape[0]} samples {tuple(shape)}")
    rows = [fn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype).to(device) for g in generator]
    return torch.stack(rows)


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
        generator: Generators = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from `sample` = x_t to x_prev (the next entry of `timesteps`, or the
        clean data after the last one). Returns (prev_sample, x0_pred)."""
        ...

    def init_noise(
        self, shape: tuple[int, ...], generator: Generators = None, **kw
    ) -> torch.Tensor:
        """A draw of x_{T-1} (the prior) of `shape`."""
        ...


class SamplingTimesteps:
    """`set_timesteps` / `prev_timestep`, shared by both schedulers.

    Needs `num_train_timesteps` and `timestep_spacing` on the instance.
    """

    def init_schedule(self, schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float,
                      timestep_spacing: str) -> None:
        """The noise schedule as non-persistent float64 buffers `betas`, `alpha_bar` (T,), and all
        T timesteps as the sampling ones (for an nn.Module scheduler)."""
        self.num_train_timesteps = num_train_timesteps
        self.timestep_spacing = timestep_spacing
        betas = make_betas(schedule, num_train_timesteps, beta_start, beta_end)
        self.register_buffer("betas", betas, persistent=False)  # (T,) float64
        self.register_buffer("alpha_bar", torch.cumprod(1.0 - betas, 0), persistent=False)
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Descending timesteps (n,); `step` at timesteps[i] goes to timesteps[i+1] (or -1)."""
        self.num_inference_steps = num_inference_steps
        ts = make_timesteps(self.num_train_timesteps, num_inference_steps, self.timestep_spacing)
        self.timesteps = ts
        nxt = torch.cat([ts[1:], ts.new_tensor([-1])])
        self._prev_of = {int(a): int(b) for a, b in zip(ts, nxt, strict=True)}

    def prev_timestep(self, t: int | torch.Tensor) -> int:
        """The timestep the sampler reaches from t (-1 = clean data)."""
        t = int(t)
        if t not in self._prev_of:
            raise ValueError(f"t = {t} is not one of the {self.num_inference_steps} sampling steps")
        return self._prev_of[t]

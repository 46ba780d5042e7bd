"""Noise schedules as small pure float64 functions, plus the shared time conventions.

Time convention (both processes, diffusers-style, 0-indexed, no wrap-around):

* ``T`` training steps, ``t`` in ``[0, T-1]``. ``x_t`` is the latent after ``t + 1`` noising
  steps, so ``betas[t]`` is the variance of the step that produces ``x_t`` from ``x_{t-1}``.
* ``x_{-1}`` is the clean data ``x0``; ``alpha_bar(-1) = 1`` by definition
  (see :func:`alpha_bar_at`). ``x_{T-1}`` is (almost) pure noise.
* A sampler walks a descending list of timesteps ``t_1 > t_2 > ... > t_n`` and then to ``-1``:
  the step at ``t = timesteps[-1]`` returns the clean sample.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "cosine_alpha_bar",
    "cosine_betas",
    "linear_betas",
    "scaled_linear_betas",
    "betas_from_alpha_bar",
    "make_betas",
    "make_timesteps",
    "alpha_bar_at",
    "unsqueeze_right",
]


def cosine_alpha_bar(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule, Nichol & Dhariwal 2021 eq. 17: abar(t) = f(t)/f(0),
    f(t) = cos(((t/T + s)/(1 + s)) * pi/2)^2. Betas are clipped at `max_beta`.

    Returns alpha_bar (T,) float64 for our 0-indexed t (= paper step t+1).
    """
    return torch.cumprod(1.0 - cosine_betas(T, s, max_beta), dim=0)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas (T,) float64 of the cosine schedule: beta_t = 1 - f(t+1)/f(t), clipped."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1.0 - f[1:] / f[:-1]).clamp(max=max_beta)


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Linear betas (T,) float64, Ho et al. 2020 (1e-4 .. 0.02 for T = 1000)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def scaled_linear_betas(
    T: int, beta_start: float = 8.5e-4, beta_end: float = 1.2e-2
) -> torch.Tensor:
    """Linear in sqrt(beta) (latent diffusion, Rombach et al. 2022): (T,) float64."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Inverse of cumprod: beta_t = 1 - abar_t / abar_{t-1}, with abar_{-1} = 1."""
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1.0 - alpha_bar / prev


def make_betas(
    schedule: str, T: int, beta_start: float | None = None, beta_end: float | None = None
) -> torch.Tensor:
    """Betas (T,) float64 for `schedule` in {"cosine", "linear", "scaled_linear"}."""
    kw = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
    if schedule == "cosine":
        if kw:
            raise ValueError("cosine schedule takes no beta_start/beta_end")
        return cosine_betas(T)
    if schedule == "linear":
        return linear_betas(T, **kw)
    if schedule == "scaled_linear":
        return scaled_linear_betas(T, **kw)
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine', 'linear' or 'scaled_linear'")


def make_timesteps(T: int, n: int, spacing: str = "trailing") -> torch.Tensor:
    """Descending, unique int64 timesteps (n,) in [0, T-1] for an n-step sampler.

    * "trailing" (default, Lin et al. 2024 "Common diffusion noise schedules are flawed"):
      round(linspace(T-1, 0, n)); always starts at the pure-noise end t = T-1 and ends at t = 0.
    * "leading" (DDIM paper / diffusers): t = k * (T // n) for k = n-1 .. 0; starts below T-1
      when T is not a multiple of n, never reaches T-1 unless n = 1 and T = 1.
    """
    if not 1 <= n <= T:
        raise ValueError(f"number of steps must be in [1, {T}], got {n}")
    if spacing == "trailing":
        if n == 1:
            return torch.tensor([T - 1], dtype=torch.long)
        grid = torch.linspace(T - 1, 0, n, dtype=torch.float64)
        ts = torch.floor(grid + 0.5).long()
    elif spacing == "leading":
        ts = torch.arange(n - 1, -1, -1, dtype=torch.long) * (T // n)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use 'trailing' or 'leading'")
    return ts


def alpha_bar_at(alpha_bar: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
    """abar_t with the convention abar_{-1} = 1 (clean data); t may be a tensor of indices."""
    t = torch.as_tensor(t, device=alpha_bar.device, dtype=torch.long)
    out = alpha_bar[t.clamp(min=0)]
    return torch.where(t < 0, torch.ones_like(out), out)


def unsqueeze_right(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append singleton dims so a (B,) or () coefficient broadcasts against an ndim tensor."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))

"""Gaussian diffusion: DDPM training (Ho et al. 2020), DDPM ancestral and DDIM sampling
(Song et al. 2021) with any step count, eps / v / x0 parameterisations (Salimans & Ho 2022).

Time convention in shared/diffusion/schedules.py (0-indexed t, abar_{-1} = 1):

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0

A reverse step goes from t to s < t (s = the next sampling timestep, -1 at the end), with
alpha_{t|s} = abar_t / abar_s and beta_{t|s} = 1 - alpha_{t|s}:

    DDPM (eq. 7):  mean = sqrt(abar_s) beta_{t|s} / (1 - abar_t) x0
                        + sqrt(alpha_{t|s}) (1 - abar_s) / (1 - abar_t) x_t,
                   var  = (1 - abar_s) / (1 - abar_t) beta_{t|s}
    DDIM (eq. 12): x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z,
                   sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(beta_{t|s})
"""

from __future__ import annotations

import torch
from torch import nn

from shared.diffusion.protocol import Generators, SamplingTimesteps, random_draw
from shared.diffusion.schedules import alpha_bar_at, unsqueeze_right

__all__ = ["GaussianScheduler", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class GaussianScheduler(SamplingTimesteps, nn.Module):
    """DDPM/DDIM noise process; never calls the network.

    Args:
        num_train_timesteps: T.
        schedule: "linear", "scaled_linear" or "cosine"; beta_start/beta_end for the linear ones.
        prediction_type: what the network outputs: "epsilon", "v_prediction" or "sample" (x0).
        sampler: "ddim" (eta controls stochasticity; eta = 1 equals DDPM's variance) or "ddpm"
            (ancestral step with the eq. 7 posterior, strided if fewer steps are set).
        eta: DDIM eta (0 = deterministic).
        timestep_spacing: "trailing" (default; starts at T-1) or "leading".
        clip_sample: clamp x0_pred to [-clip_sample, clip_sample] in the sampler (None = off).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear",
        beta_start: float | None = None,
        beta_end: float | None = None,
        prediction_type: str = "epsilon",
        sampler: str = "ddim",
        eta: float = 0.0,
        timestep_spacing: str = "trailing",
        clip_sample: float | None = None,
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {prediction_type!r} not in {PREDICTION_TYPES}")
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler {sampler!r} must be 'ddim' or 'ddpm'")
        self.prediction_type = prediction_type
        self.sampler = sampler
        self.eta = eta
        self.clip_sample = clip_sample
        self.init_schedule(schedule, num_train_timesteps, beta_start, beta_end, timestep_spacing)

    # ---------------------------------------------------------------- coefficients
    def _abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """abar_t (abar_{-1} = 1) broadcast against `like`, on its device and dtype."""
        t = torch.as_tensor(t, device=self.alpha_bar.device).reshape(-1)
        return unsqueeze_right(alpha_bar_at(self.alpha_bar, t).to(like.device, like.dtype), like.ndim)

    # ---------------------------------------------------------------- training side
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; x0, noise (B, C, *S), t (B,) int64."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def get_velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The regression target matching `prediction_type` (eps, v or x0)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.get_velocity(x0, noise, t)
        return x0

    # ---------------------------------------------------------------- conversions
    def eps_to_x0(self, eps: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a = self._abar(t, xt)
        return (xt - (1 - a).sqrt() * eps) / a.sqrt()

    def x0_to_eps(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a = self._abar(t, xt)
        return (xt - a.sqrt() * x0) / (1 - a).sqrt()

    def v_to_x0(self, v: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a = self._abar(t, xt)
        return a.sqrt() * xt - (1 - a).sqrt() * v

    def v_to_eps(self, v: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        a = self._abar(t, xt)
        return (1 - a).sqrt() * xt + a.sqrt() * v

    def predict_x0_eps(
        self, model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_pred, eps_pred) from the network output under `prediction_type`."""
        if self.prediction_type == "epsilon":
            x0 = self.eps_to_x0(model_output, xt, t)
            if self.clip_sample is None:
                return x0, model_output
        elif self.prediction_type == "v_prediction":
            x0 = self.v_to_x0(model_output, xt, t)
            if self.clip_sample is None:
                return x0, self.v_to_eps(model_output, xt, t)
        else:
            x0 = model_output
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0, self.x0_to_eps(x0, xt, t)

    # ---------------------------------------------------------------- posterior
    def posterior_mean_variance(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int,
        s: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q(x_s | x_t, x_0) = N(mean, var) (Ho et al. 2020 eq. 7; strided for s < t - 1)."""
        s = torch.as_tensor(t).reshape(-1) - 1 if s is None else s
        abar_t, abar_s = self._abar(t, xt), self._abar(s, xt)
        alpha_ts = abar_t / abar_s
        beta_ts = 1 - alpha_ts
        mean = (abar_s.sqrt() * beta_ts / (1 - abar_t)) * x0 + (
            alpha_ts.sqrt() * (1 - abar_s) / (1 - abar_t)
        ) * xt
        var = (1 - abar_s) / (1 - abar_t) * beta_ts
        return mean, var.expand_as(mean)

    # ---------------------------------------------------------------- sampler
    def init_noise(
        self, shape: tuple[int, ...], generator: Generators = None,
        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """x_{T-1} ~ N(0, I) of `shape`."""
        return random_draw("normal", shape, generator, device, dtype)

    def step(
        self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor,
        generator: Generators = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM / DDPM step x_t -> x_s, s = prev(t). Returns (x_s, x0_pred)."""
        s = self.prev_timestep(t)
        t = int(t)
        out = model_output.to(sample.dtype)
        x0, eps = self.predict_x0_eps(out, sample, t)
        if self.sampler == "ddpm":
            mean, var = self.posterior_mean_variance(x0, sample, t, s)
            std = var.sqrt()
        else:
            abar_t, abar_s = self._abar(t, sample), self._abar(s, sample)
            sigma = self.eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
            mean = abar_s.sqrt() * x0 + (1 - abar_s - sigma**2).clamp(min=0).sqrt() * eps
            std = sigma
        if s < 0 or (self.sampler == "ddim" and self.eta == 0):
            return mean, x0
        z = random_draw("normal", tuple(sample.shape), generator, sample.device, sample.dtype)
        return mean + std * z, x0

"""Categorical diffusion with uniform noise (CCDM, Zbinden et al. 2023; D3PM, Austin et al. 2021).

Forward process (time convention in shared/diffusion/schedules.py: 0-indexed t, abar_{-1} = 1):

    Q_t = (1 - beta_t) I + beta_t / K 11^T                       one step x_{t-1} -> x_t
    q(x_t | x_0) = abar_t x_0 + (1 - abar_t) / K                  abar_t = prod_{i<=t} (1 - beta_i)
    q(x_t | x_s) = abar_{t|s} x_s + (1 - abar_{t|s}) / K           abar_{t|s} = abar_t / abar_s, s < t

Posterior (Bayes), for any s < t (s = t - 1 for a single step; s = -1 gives x_0 itself):

    q(x_s | x_t, x_0) ∝ [abar_{t|s} x_t + (1 - abar_{t|s})/K] ⊙ [abar_s x_0 + (1 - abar_s)/K]

Reverse model: the network outputs x0 LOGITS (B, K, ...); p(x_0 | x_t) = softmax(logits).
The reverse transition marginalises the x0 posterior over the predicted classes,

    p(x_s | x_t) = sum_k p(x_0 = k | x_t) q(x_s | x_t, x_0 = e_k)
                 = L ⊙ (abar_s w + (1 - abar_s)/K sum_k w_k),   w = p / q(x_t | x_0 = e_k)_k,

with L = abar_{t|s} x_t + (1 - abar_{t|s})/K and q(x_t | x_0 = e_k) = abar_t [x_t = k] + (1 - abar_t)/K
(closed form because the noise is uniform). At s = -1 this is exactly p(x_0 | x_t).

All shapes are (B, K, *spatial) with any number of spatial dims; one-hot / probabilities in
channel dim 1. Labels (B, *spatial) int64 are accepted wherever x0 is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.diffusion.protocol import Generators, SamplingTimesteps, random_draw
from shared.diffusion.schedules import alpha_bar_at, unsqueeze_right

__all__ = ["CategoricalScheduler", "sample_categorical", "to_onehot"]


def to_onehot(x0: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Labels (B, *S) int -> one-hot (B, K, *S); a float (B, K, *S) input is returned as is."""
    if x0.is_floating_point():
        if x0.shape[1] != num_classes:
            raise ValueError(f"expected {num_classes} classes in dim 1, got shape {tuple(x0.shape)}")
        return x0
    if x0.min() < 0 or x0.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got [{x0.min()}, {x0.max()}]")
    return F.one_hot(x0.long(), num_classes).movedim(-1, 1).to(dtype)  # (B, K, *S)


def sample_categorical(probs: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """One draw per voxel from probs (B, K, *S) by inverse CDF; returns one-hot (B, K, *S)."""
    u = random_draw("uniform", (probs.shape[0], 1, *probs.shape[2:]), generator, probs.device,
                    torch.float64 if probs.dtype == torch.float64 else torch.float32)
    cdf = probs.to(u.dtype).cumsum(dim=1)
    cdf = cdf / cdf[:, -1:]  # guard against rounding: last entry exactly 1
    idx = (cdf < u).sum(dim=1).clamp(max=probs.shape[1] - 1)  # (B, *S)
    return F.one_hot(idx, probs.shape[1]).movedim(-1, 1).to(probs.dtype)


class CategoricalScheduler(SamplingTimesteps, nn.Module):
    """Uniform-noise categorical diffusion: training terms (q_sample, posteriors, KL loss) and
    the sampler (`set_timesteps`, `step`), never calling the network.

    Args:
        num_classes: K.
        num_train_timesteps: T.
        schedule: "cosine" (s = 0.008, CCDM default) or "linear" (beta_start/beta_end).
        timestep_spacing: "trailing" or "leading" (see `make_timesteps`).
        final_argmax: the last reverse step returns one-hot(argmax p(x0|x_t)) instead of a draw.
    """

    def __init__(
        self,
        num_classes: int,
        num_train_timesteps: int = 1000,
        schedule: str = "cosine",
        beta_start: float | None = None,
        beta_end: float | None = None,
        timestep_spacing: str = "trailing",
        final_argmax: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.final_argmax = final_argmax
        self.init_schedule(schedule, num_train_timesteps, beta_start, beta_end, timestep_spacing)

    # ---------------------------------------------------------------- coefficients
    def _abar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """abar_t broadcast against `like` (B, K, *S), in like's dtype (>= float32)."""
        t = torch.as_tensor(t, device=self.alpha_bar.device).reshape(-1)
        dtype = like.dtype if like.dtype == torch.float64 else torch.float32
        return unsqueeze_right(alpha_bar_at(self.alpha_bar, t).to(like.device, dtype), like.ndim)

    def _prev(self, t: torch.Tensor | int) -> torch.Tensor:
        return torch.as_tensor(t, device=self.alpha_bar.device).reshape(-1) - 1

    # ---------------------------------------------------------------- forward process
    def q_probs(self, x0: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """q(x_t | x_0) = abar_t x0 + (1 - abar_t)/K: probs (B, K, *S); x0 one-hot/probs/labels."""
        x0 = to_onehot(x0, self.num_classes)
        a = self._abar(t, x0)
        return a * x0 + (1 - a) / self.num_classes

    def log_likelihood(self, xt: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """log q(x_t | x_0 = k) for every class k: (B, K, *S) from one-hot x_t (B, K, *S).

        The evidence each voxel of x_t carries about its own x_0 (Q-bar_t is symmetric, so this
        is log(abar_t x_t + (1 - abar_t)/K)); softmax over k is p(x_0 | x_t) under a uniform prior.
        Added to a network's x0 logits it leaves the network only the context (prior) part."""
        return self.q_probs(xt, t).log()

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, generator: Generators = None
    ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0): one-hot (B, K, *S); t (B,) int64 or an int."""
        return sample_categorical(self.q_probs(x0, t), generator)

    def init_noise(
        self, shape: tuple[int, ...], generator: Generators = None,
        device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Prior draw (uniform over K, the limit of q(x_{T-1})): one-hot of `shape` (B, K, *S)."""
        if shape[1] != self.num_classes:
            raise ValueError(f"shape {shape} must have {self.num_classes} classes in dim 1")
        probs = torch.full(shape, 1.0 / self.num_classes, device=device, dtype=dtype)
        return sample_categorical(probs, generator)

    # ---------------------------------------------------------------- posteriors
    def q_posterior(
        self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int,
        s: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Exact q(x_s | x_t, x_0) (B, K, *S) for s < t (default s = t - 1; s = -1 gives x0)."""
        x0 = to_onehot(x0, self.num_classes).to(xt.dtype)
        s = self._prev(t) if s is None else s
        abar_t, abar_s = self._abar(t, xt), self._abar(s, xt)
        a, k = abar_t / abar_s, self.num_classes  # abar_{t|s}
        unnorm = (a * xt + (1 - a) / k) * (abar_s * x0 + (1 - abar_s) / k)
        return unnorm / unnorm.sum(dim=1, keepdim=True)

    def p_posterior(
        self, x0_probs: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int,
        s: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """p(x_s | x_t) = sum_k p(x0 = k | x_t) q(x_s | x_t, x0 = e_k) (closed form, module doc).

        x0_probs, xt: (B, K, *S); xt must be one-hot. Returns probs (B, K, *S).
        """
        x0_probs = x0_probs.to(xt.dtype)
        s = self._prev(t) if s is None else s
        abar_t, abar_s = self._abar(t, xt), self._abar(s, xt)
        a, k = abar_t / abar_s, self.num_classes
        lik = a * xt + (1 - a) / k  # q(x_t | x_s = j) over j      (B, K, *S)
        evidence = abar_t * xt + (1 - abar_t) / k  # q(x_t | x0 = e_k) over k   (B, K, *S)
        w = x0_probs / evidence
        unnorm = lik * (abar_s * w + (1 - abar_s) / k * w.sum(dim=1, keepdim=True))
        return unnorm / unnorm.sum(dim=1, keepdim=True)

    # ---------------------------------------------------------------- training loss
    def loss(
        self, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
        class_weights: torch.Tensor | None = None, ce_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) per voxel, class-weighted mean.

        logits: network x0 logits (B, K, *S); x0: labels (B, *S) or one-hot; xt: one-hot from
        `q_sample`; t: (B,). `class_weights` (K,) weight each voxel by its TRUE class; the mean
        is sum(w * kl) / sum(w). With `ce_weight` > 0 adds that times the (class-weighted)
        cross-entropy of the LOGITS against x0 (an auxiliary term, as in CCDM / D3PM's lambda).
        Returns {"loss", "kl", "ce"} scalars.
        """
        x0_1h = to_onehot(x0, self.num_classes)
        labels = x0_1h.argmax(dim=1)  # (B, *S)
        xt32 = xt.float()
        q = self.q_posterior(x0_1h.float(), xt32, t)
        p = self.p_posterior(torch.softmax(logits.float(), dim=1), xt32, t)
        kl = (torch.xlogy(q, q) - q * torch.log(p.clamp_min(1e-30))).sum(dim=1)  # (B, *S)
        if class_weights is None:
            w = torch.ones_like(kl)
        else:
            w = class_weights.to(kl.device, kl.dtype)[labels]  # (B, *S)
        kl_mean = (w * kl).sum() / w.sum()
        ce = F.cross_entropy(
            logits.float(), labels,
            weight=None if class_weights is None else class_weights.to(kl.device, kl.dtype),
        )
        loss = kl_mean + ce_weight * ce if ce_weight > 0 else kl_mean
        return {"loss": loss, "kl": kl_mean.detach(), "ce": ce.detach()}

    # ---------------------------------------------------------------- sampler
    def step(
        self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor,
        generator: Generators = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t (one-hot, B, K, *S) + x0 logits -> (x_s one-hot, p(x0 | x_t) probs), s = prev(t).

        The strided transition uses abar_{t|s} = abar_t / abar_s (the product of the skipped
        one-step matrices). At the last step (s = -1) the posterior is p(x0 | x_t) itself.
        """
        s = self.prev_timestep(t)
        x0_probs = torch.softmax(model_output.float(), dim=1)  # (B, K, *S)
        xt = sample.float()
        if s < 0 and self.final_argmax:
            prev = F.one_hot(x0_probs.argmax(1), self.num_classes).movedim(-1, 1).float()
        else:
            prev = sample_categorical(self.p_posterior(x0_probs, xt, int(t), s), generator)
        return prev.to(sample.dtype), x0_probs

"""GaussianScheduler against closed forms, in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.diffusion import GaussianScheduler, make_timesteps

T = 50


def make(pred: str = "epsilon", schedule: str = "linear", **kw) -> GaussianScheduler:
    extra = {"beta_start": 1e-3, "beta_end": 0.2} if schedule == "linear" else {}
    return GaussianScheduler(T, schedule=schedule, prediction_type=pred, **extra, **kw)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
def test_add_noise_moments(schedule):
    """E[x_t] = sqrt(abar) x0, Var[x_t] = 1 - abar; tolerances from the CLT (5 sigma)."""
    sched = make(schedule=schedule)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    for t in [0, 10, T - 1]:
        noise = torch.randn(n, 1, generator=gen, dtype=torch.float64)
        xt = sched.add_noise(x0, noise, torch.full((n,), t))
        abar = float(sched.alpha_bar[t])
        var = 1 - abar
        assert abs(xt.mean().item() - abar**0.5 * 0.7) < 5 * (var / n) ** 0.5
        assert abs(xt.var().item() - var) < 5 * var * (2 / n) ** 0.5


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4, 2)])
def test_conversion_round_trips(shape):
    sched = make()
    gen = torch.Generator().manual_seed(1)
    x0, eps = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    t = torch.randint(0, T, (shape[0],), generator=gen)
    xt = sched.add_noise(x0, eps, t)
    v = sched.get_velocity(x0, eps, t)
    close = dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sched.eps_to_x0(eps, xt, t), x0, **close)
    torch.testing.assert_close(sched.x0_to_eps(x0, xt, t), eps, **close)
    torch.testing.assert_close(sched.v_to_x0(v, xt, t), x0, **close)
    torch.testing.assert_close(sched.v_to_eps(v, xt, t), eps, **close)
    for pred, out in [("epsilon", eps), ("v_prediction", v), ("sample", x0)]:
        s = make(pred)
        torch.testing.assert_close(s.training_target(x0, eps, t), out)
        x0_pred, eps_pred = s.predict_x0_eps(out, xt, t)
        torch.testing.assert_close(x0_pred, x0, **close)
        torch.testing.assert_close(eps_pred, eps, **close)


@pytest.mark.parametrize("t", [0, 1, 17, T - 1])
def test_posterior_equals_ho_eq7(t):
    sched = make()
    gen = torch.Generator().manual_seed(2)
    x0, xt = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    betas = sched.betas.tolist()
    alphas = [1 - b for b in betas]
    abar = [float(torch.tensor(alphas[: i + 1], dtype=torch.float64).prod()) for i in range(T)]
    abar_prev = abar[t - 1] if t > 0 else 1.0
    beta = betas[t]
    mean_ref = (abar_prev**0.5 * beta / (1 - abar[t])) * x0 + (
        alphas[t] ** 0.5 * (1 - abar_prev) / (1 - abar[t])
    ) * xt
    var_ref = (1 - abar_prev) / (1 - abar[t]) * beta
    mean, var = sched.posterior_mean_variance(x0, xt, torch.full((4,), t))
    torch.testing.assert_close(mean, mean_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, torch.full_like(var, var_ref), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("n", [1, 2, 7, T])
def test_ddim_with_oracle_recovers_x0(n, pred):
    sched = make(pred, sampler="ddim", eta=0.0)
    sched.set_timesteps(n)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    for t in sched.timesteps.tolist():
        tt = torch.full((2,), t)
        eps = sched.x0_to_eps(x0, x, tt)
        out = {"epsilon": eps, "v_prediction": sched.get_velocity(x0, eps, tt), "sample": x0}[pred]
        x, _ = sched.step(out, t, x, gen)
    torch.testing.assert_close(x, x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_stochastic_oracle_sampler_ends_at_x0(sampler):
    """DDPM / DDIM(eta=1): the last step has zero variance, so an x0 oracle still ends at x0."""
    sched = make("sample", sampler=sampler, eta=1.0)
    sched.set_timesteps(5)
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    for t in sched.timesteps.tolist():
        x, _ = sched.step(x0, t, x, gen)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-12)


def test_ddpm_step_matches_posterior_moments():
    """Monte-Carlo: one strided DDPM step draws from N(mean, var) of the strided posterior."""
    sched = make("sample", sampler="ddpm")
    sched.set_timesteps(5)
    t = int(sched.timesteps[1])
    s = sched.prev_timestep(t)
    gen = torch.Generator().manual_seed(5)
    n = 100_000
    x0 = torch.full((n, 1), 0.3, dtype=torch.float64)
    xt = torch.full((n, 1), -0.5, dtype=torch.float64)
    prev, _ = sched.step(x0, t, xt, gen)
    mean, var = sched.posterior_mean_variance(x0[:1], xt[:1], t, s)
    assert abs(prev.mean() - mean.item()) < 5 * (var.item() / n) ** 0.5
    assert abs(prev.var() - var.item()) < 5 * var.item() * (2 / n) ** 0.5


@settings(max_examples=60, deadline=None)
@given(
    T_=st.integers(1, 1200),
    frac=st.floats(0, 1),
    spacing=st.sampled_from(["trailing", "leading"]),
)
def test_timesteps_unique_descending_in_range(T_, frac, spacing):
    n = max(1, round(frac * T_))
    ts = make_timesteps(T_, n, spacing)
    assert ts.dtype == torch.long and len(ts) == n
    assert int(ts.min()) >= 0 and int(ts.max()) <= T_ - 1
    assert torch.all(ts[:-1] > ts[1:])
    if spacing == "trailing":
        assert int(ts[0]) == T_ - 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="prediction_type"):
        GaussianScheduler(10, prediction_type="x")
    with pytest.raises(ValueError, match="number of steps"):
        make().set_timesteps(T + 1)
    with pytest.raises(ValueError, match="unknown schedule"):
        GaussianScheduler(10, schedule="sigmoid")

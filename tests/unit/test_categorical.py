"""CategoricalScheduler against explicit K x K transition matrices, in float64."""

from __future__ import annotations

import pytest
import torch

from shared.diffusion import CategoricalScheduler, cfg_combine, sample_loop

K, T = 4, 12
SHAPES = [(5,), (3, 4), (2, 3, 2)]  # 1D, 2D, 3D spatial


@pytest.fixture(params=["cosine", "linear"])
def sched(request) -> CategoricalScheduler:
    kw = {"beta_start": 0.02, "beta_end": 0.3} if request.param == "linear" else {}
    return CategoricalScheduler(K, T, schedule=request.param, **kw)


def one_step_matrix(beta: float) -> torch.Tensor:
    """Q_t[i, j] = q(x_t = j | x_{t-1} = i) = (1 - beta) I + beta / K 11^T."""
    return (1 - beta) * torch.eye(K, dtype=torch.float64) + beta / K * torch.ones(K, K, dtype=torch.float64)


def product(sched: CategoricalScheduler, lo: int, hi: int) -> torch.Tensor:
    """Q_{lo} Q_{lo+1} ... Q_{hi} (the transition x_{lo-1} -> x_hi)."""
    m = torch.eye(K, dtype=torch.float64)
    for i in range(lo, hi + 1):
        m = m @ one_step_matrix(float(sched.betas[i]))
    return m


def random_x0(shape, gen) -> torch.Tensor:
    labels = torch.randint(0, K, (2, *shape), generator=gen)
    return torch.nn.functional.one_hot(labels, K).movedim(-1, 1).double()  # (2, K, *S)


@pytest.mark.parametrize("shape", SHAPES)
def test_probabilities_sum_to_one(sched, shape):
    gen = torch.Generator().manual_seed(0)
    x0 = random_x0(shape, gen)
    xt = sched.q_sample(x0, torch.tensor([3, T - 1]), gen)
    probs = torch.softmax(torch.randn(x0.shape, generator=gen, dtype=torch.float64), 1)
    for t in [0, 3, T - 1]:
        tt = torch.tensor([t, t])
        for p in (sched.q_probs(x0, tt), sched.q_posterior(x0, xt, tt), sched.p_posterior(probs, xt, tt)):
            assert p.min() >= 0
            torch.testing.assert_close(p.sum(1), torch.ones_like(p.sum(1)), rtol=0, atol=1e-12)
    assert set(xt.sum(1).unique().tolist()) == {1.0}  # one-hot samples


def test_marginal_equals_product_of_one_step_matrices(sched):
    x0 = torch.eye(K, dtype=torch.float64)[:, :, None]  # every class as x0: (K, K, 1)
    for t in range(T):
        expected = product(sched, 0, t)  # row i = q(x_t | x_0 = i)
        got = sched.q_probs(x0, torch.full((K,), t))[..., 0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def bayes_posterior(sched, x0: int, xt: int, t: int, s: int) -> torch.Tensor:
    """q(x_s = j | x_t, x_0) by Bayes with explicit matrices; s = -1 means x_s = x_0."""
    prior = product(sched, 0, s)[x0] if s >= 0 else torch.eye(K, dtype=torch.float64)[x0]
    lik = product(sched, s + 1, t)[:, xt]  # q(x_t = xt | x_s = j) over j
    joint = prior * lik
    return joint / joint.sum()


@pytest.mark.parametrize("t", [0, 1, 5, T - 1])
def test_posterior_equals_bayes(sched, t):
    for i0 in range(K):
        for it in range(K):
            x0 = torch.eye(K, dtype=torch.float64)[i0].reshape(1, K, 1)
            xt = torch.eye(K, dtype=torch.float64)[it].reshape(1, K, 1)
            got = sched.q_posterior(x0, xt, torch.tensor([t]))[0, :, 0]
            torch.testing.assert_close(got, bayes_posterior(sched, i0, it, t, t - 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("t", "s"), [(11, 7), (5, 0), (11, -1), (3, 2), (6, -1)])
def test_strided_posterior_equals_bayes_with_product(sched, t, s):
    """Going t -> s uses abar_t / abar_s = the product of the skipped one-step matrices."""
    torch.testing.assert_close(
        sched.q_probs(torch.eye(K, dtype=torch.float64)[:, :, None], torch.full((K,), t))[..., 0],
        (product(sched, 0, s) if s >= 0 else torch.eye(K, dtype=torch.float64)) @ product(sched, s + 1, t),
        rtol=0, atol=1e-12,
    )
    for i0 in range(K):
        for it in range(K):
            x0 = torch.eye(K, dtype=torch.float64)[i0].reshape(1, K, 1)
            xt = torch.eye(K, dtype=torch.float64)[it].reshape(1, K, 1)
            got = sched.q_posterior(x0, xt, torch.tensor([t]), torch.tensor([s]))[0, :, 0]
            torch.testing.assert_close(got, bayes_posterior(sched, i0, it, t, s), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("t", "s"), [(4, 3), (0, -1), (11, 2), (7, -1)])
def test_predicted_posterior_is_mixture_of_exact_posteriors(sched, t, s):
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(1, K, 1, generator=gen, dtype=torch.float64), 1)
    for it in range(K):
        xt = torch.eye(K, dtype=torch.float64)[it].reshape(1, K, 1)
        expected = sum(
            probs[0, k, 0] * bayes_posterior(sched, k, it, t, s) for k in range(K)
        )
        got = sched.p_posterior(probs, xt, torch.tensor([t]), torch.tensor([s]))[0, :, 0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        # at a one-hot x0 it is the exact posterior
        x0 = torch.eye(K, dtype=torch.float64)[(it + 1) % K].reshape(1, K, 1)
        torch.testing.assert_close(
            sched.p_posterior(x0, xt, t, s), sched.q_posterior(x0, xt, t, s), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("shape", SHAPES)
def test_kl_zero_at_truth_positive_elsewhere(sched, shape):
    gen = torch.Generator().manual_seed(2)
    x0 = random_x0(shape, gen)
    t = torch.tensor([0, 6])
    xt = sched.q_sample(x0, t, gen)
    perfect = torch.where(x0 > 0, 0.0, -80.0).float()  # logits of the true x0
    loss = sched.loss(perfect, x0.argmax(1), xt, t)
    assert float(loss["kl"]) < 1e-6
    wrong = torch.randn(x0.shape, generator=gen)
    assert float(sched.loss(wrong, x0.argmax(1), xt, t)["kl"]) > 1e-3
    # class weights and CE-on-logits run and are finite
    w = torch.linspace(0.5, 2.0, K)
    out = sched.loss(wrong, x0.argmax(1), xt, t, class_weights=w, ce_weight=0.1)
    assert torch.isfinite(out["loss"]) and out["loss"] > out["kl"]


def test_q_sample_matches_marginal_frequencies(sched):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.zeros(1, K, 20000, dtype=torch.float64)
    x0[:, 1] = 1
    t = 4
    freq = sched.q_sample(x0, t, gen).mean(-1)[0]
    p = sched.q_probs(x0[..., :1], t)[0, :, 0]
    assert torch.all((freq - p).abs() < 5 * (p * (1 - p) / 20000).sqrt() + 1e-9)


def _logit_fn(gen_seed: int):
    def fn(x: torch.Tensor, t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(gen_seed + int(t[0]))
        out = torch.randn(x.shape[1:], generator=g).expand_as(x) + 2 * x  # depends on x
        return out if bias is None else out + bias.reshape(-1, *[1] * (x.ndim - 1))
    return fn


@pytest.mark.parametrize("shape", SHAPES)
def test_sampler_reproducible_under_generator(shape):
    sched = CategoricalScheduler(K, T)
    sched.set_timesteps(3)
    x_T = sched.init_noise((2, K, *shape), torch.Generator().manual_seed(0))
    outs = [
        sample_loop(_logit_fn(0), sched, x_T, torch.Generator().manual_seed(5))[0] for _ in range(2)
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert outs[0].shape == x_T.shape and set(outs[0].sum(1).unique().tolist()) == {1.0}


def test_cfg_weights_zero_and_one():
    gen = torch.Generator().manual_seed(4)
    lc, lu = torch.randn(2, K, 3, generator=gen), torch.randn(2, K, 3, generator=gen)
    torch.testing.assert_close(cfg_combine(lc, lu, 0.0), lu)
    torch.testing.assert_close(cfg_combine(lc, lu, 1.0), lc)
    sched = CategoricalScheduler(K, T)
    sched.set_timesteps(2)
    xt = sched.init_noise((2, K, 3), gen)
    t = int(sched.timesteps[0])
    _, p_w0 = sched.step(cfg_combine(lc, lu, 0.0), t, xt)
    torch.testing.assert_close(p_w0, torch.softmax(lu, 1))


def test_timesteps_and_errors():
    sched = CategoricalScheduler(K, T)
    sched.set_timesteps(4)
    ts = sched.timesteps.tolist()
    assert ts[0] == T - 1 and ts[-1] == 0 and ts == sorted(set(ts), reverse=True)
    with pytest.raises(ValueError, match="not one of"):
        sched.step(torch.zeros(1, K, 2), 5, torch.zeros(1, K, 2))
    with pytest.raises(ValueError, match="labels must be"):
        sched.q_probs(torch.full((1, 2), K), 0)


def test_log_likelihood_is_bayes_posterior_under_uniform_prior() -> None:
    """softmax_k log q(x_t | x_0 = k) = q(x_t | k) / sum_j q(x_t | j) (float64, closed form)."""
    k, t = 5, torch.tensor([0, 30, 99])
    sched = CategoricalScheduler(k, num_train_timesteps=100).double()
    xt = torch.nn.functional.one_hot(torch.tensor([[1, 4], [0, 2], [3, 3]]), k).permute(0, 2, 1).double()
    ll = sched.log_likelihood(xt, t)  # (3, K, 2)
    abar = sched.alpha_bar[t].view(-1, 1, 1)
    expected = abar * xt + (1 - abar) / k  # q(x_t | x0 = k): abar [x_t = k] + (1 - abar) / K
    torch.testing.assert_close(ll.exp(), expected)
    post = ll.softmax(1)
    torch.testing.assert_close(post, expected / expected.sum(1, keepdim=True))
    assert bool((post[0].argmax(0) == xt[0].argmax(0)).all())  # t = 0: the input itself wins

"""shared.runtime (where bf16 pays off; the CLI precision fallback) and shared.diffusion.random_draw."""

from __future__ import annotations

import pytest
import torch

from shared import runtime
from shared.diffusion import random_draw


def test_bf16_is_fast_on_cpu_is_measured_where_onednn_has_bf16(monkeypatch) -> None:
    monkeypatch.delenv(runtime.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(runtime, "onednn_bf16", lambda: False)  # AVX2 only: no timing, fp32
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda threads: pytest.fail("timed without oneDNN bf16"))
    assert runtime.bf16_is_fast("cpu") is False
    monkeypatch.setattr(runtime, "onednn_bf16", lambda: True)
    for speedup, want in ((1.6, True), (runtime.MIN_CPU_SPEEDUP, True), (1.1, False), (0.55, False)):
        monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda threads, s=speedup: s)
        assert runtime.bf16_is_fast("cpu") is want
    assert runtime.bf16_is_fast("meta") is False


@pytest.mark.parametrize(("value", "want"), [("1", True), ("on", True), ("0", False), (" False ", False)])
def test_bf16_is_fast_env_override(monkeypatch, value, want) -> None:
    monkeypatch.setenv(runtime.CPU_BF16_ENV, value)
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda threads: pytest.fail("timed despite the override"))
    assert runtime.bf16_is_fast("cpu") is want


def test_bf16_is_fast_env_override_refuses_other_values(monkeypatch) -> None:
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "maybe")
    with pytest.raises(ValueError, match=runtime.CPU_BF16_ENV):
        runtime.bf16_is_fast("cpu")


def test_cpu_bf16_speedup_is_a_timing_ratio_that_leaves_the_global_rng_alone() -> None:
    """The real timing (where oneDNN has no bf16 path it times the slow reference GEMM: skipped)."""
    if not runtime.onednn_bf16():
        pytest.skip("oneDNN has no bf16 path on this CPU")
    state = torch.random.get_rng_state()
    speedup = runtime.cpu_bf16_speedup.__wrapped__(torch.get_num_threads())
    assert 0.01 < speedup < 100
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(("fast", "accelerator", "precision", "want"), [
    (False, "cpu", "bf16-mixed", "32-true"),     # AVX2-only CPU: bf16 would be ~20x slower
    (False, "auto", "bf16-true", "32-true"),     # no CUDA here: auto means the CPU
    (True, "cpu", "bf16-mixed", "bf16-mixed"),   # native bf16: kept
    (False, "cpu", "32-true", "32-true"),        # nothing to change
    (False, "gpu", "bf16-mixed", "bf16-mixed"),  # not a CPU run
])
def test_fallback_precision(monkeypatch, caplog, fast, accelerator, precision, want) -> None:
    monkeypatch.setattr(runtime, "bf16_is_fast", lambda device: fast)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer = {"accelerator": accelerator, "precision": precision}
    runtime.fallback_precision(trainer, "trainer.precision")
    assert trainer["precision"] == want
    assert ("32-true" in caplog.text) == (want != precision)


def test_apply_cli_runtime_sets_threads_and_precision(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "bf16_is_fast", lambda device: False)
    before = torch.get_num_threads()
    config = {"num_threads": 1, "trainer": {"accelerator": "cpu", "precision": "bf16-mixed"}}
    try:
        runtime.apply_cli_runtime(config)
        assert torch.get_num_threads() == 1 and config["trainer"]["precision"] == "32-true"
    finally:
        torch.set_num_threads(before)


def test_random_draw_uses_the_generators_device_and_moves_the_result() -> None:
    """A CPU generator gives the CPU draws whatever the target device (here 'meta': no data), so
    one seed samples the same on the CPU and on a GPU (checked on CUDA by bench/cuda_check.py)."""
    want = torch.randn((2, 3), generator=torch.Generator().manual_seed(5))
    got = random_draw("normal", (2, 3), torch.Generator().manual_seed(5), "cpu")
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    u = random_draw("uniform", (1000,), torch.Generator().manual_seed(0), "cpu", torch.float64)
    assert u.dtype == torch.float64 and 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.05
    moved = random_draw("normal", (2, 3), torch.Generator().manual_seed(5), "meta")
    assert moved.device.type == "meta" and moved.shape == (2, 3)
    assert random_draw("normal", (4,), None, "cpu").shape == (4,)
    with pytest.raises(KeyError):
        random_draw("poisson", (4,), None, "cpu")

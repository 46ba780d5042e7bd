"""SliceGenerator (the stage-2 inference component) on the tiny trained LDM: 2-step generation,
defaults from the artifact's inference block, per-volume generators, autocast, noise correlation,
level harmonisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.labels import default_labels


@pytest.fixture(scope="module")
def gen(tiny_stage2: dict[str, Path]):
    from stage2_ct.generator import load_slice_ldm

    return load_slice_ldm(tiny_stage2["ldm"])


@pytest.fixture(scope="module")
def store(tiny_stage2: dict[str, Path]):
    from stage2_ct.data import load_cases

    return load_cases(tiny_stage2["manifest"], "train", 4, default_labels(), (2, 2, 2))


def test_generate_two_steps(gen, store) -> None:
    assert float(gen.vae.latent_scale) > 0
    masks = store.labels[:2]  # (2, 32, 32, 16)
    hu = gen.generate(masks, store.summaries[:2], torch.Generator().manual_seed(0), steps=2, guidance=2.0)
    assert hu.shape == masks.shape and hu.dtype == torch.float32
    assert torch.isfinite(hu).all() and hu.min() >= -1000 and hu.max() <= 1000
    again = gen.generate(masks, store.summaries[:2], torch.Generator().manual_seed(0), steps=2, guidance=2.0)
    assert torch.equal(hu, again)  # the generator drives every draw
    with pytest.raises(ValueError, match="summaries"):
        gen.generate(masks, store.summaries[:1], steps=2)
    with pytest.raises(ValueError, match="noise_corr"):
        gen.generate(masks, store.summaries[:2], steps=2, noise_corr=1.0)
    with pytest.raises(ValueError, match="level_sigma"):
        gen.generate(masks, store.summaries[:2], steps=2, level_sigma=-1.0)


def test_defaults_come_from_the_inference_block(gen, tiny_stage2: dict[str, Path]) -> None:
    from shared.io.artifact import read_component_spec

    block = read_component_spec(tiny_stage2["ldm"])["inference"]
    assert gen.sampling.to_dict() == block


def test_one_generator_per_volume_makes_volumes_batch_independent(gen, store) -> None:
    """fp32: volume i generated in a batch of 4 equals volume i generated alone (same generator seed)."""
    masks, texts = store.labels[:4, ..., :4], store.summaries[:4]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(4)]
    batch = gen.generate(masks, texts, gens, autocast=False, steps=2, guidance=1.5)
    for i in (0, 3):
        alone = gen.generate(masks[i : i + 1], texts[i : i + 1], [torch.Generator().manual_seed(100 + i)],
                             autocast=False, steps=2, guidance=1.5)
        torch.testing.assert_close(alone[0], batch[i], atol=0.05, rtol=0)  # HU; float rounding only
    with pytest.raises(ValueError, match="generators"):
        gen.generate(masks, texts, gens[:3], autocast=False, steps=1)


@pytest.mark.parametrize("fast", [False, True])
def test_autocasts_where_bf16_is_fast(gen, store, monkeypatch, fast) -> None:
    """autocast=None (the default): bf16 for the UNet and the VAE decoder body only where
    shared.runtime.bf16_is_fast says so for the device (not on an AVX2-only CPU)."""
    import stage2_ct.generator as gen_mod

    monkeypatch.setattr(gen_mod, "bf16_is_fast", lambda device: fast)
    seen: list[bool] = []
    decode = gen.vae.decode_hu
    monkeypatch.setattr(gen.vae, "decode_hu", lambda z, bf16=False: seen.append(bf16) or decode(z, bf16=bf16))
    dtypes: list[torch.dtype] = []
    hook = gen.denoiser.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    gen.generate(store.labels[:1, ..., :2], store.summaries[:1], torch.Generator().manual_seed(0), steps=1)
    hook.remove()
    assert seen and set(seen) == {fast}
    assert set(dtypes) == {torch.bfloat16 if fast else torch.float32}


def test_correlated_initial_noise(gen, store) -> None:
    """noise_corr rho: slice k starts from rho * x_T(k-1) + sqrt(1 - rho^2) * fresh, where the fresh
    draws are those of rho = 0 with the same generator (AR(1) along z, exact recursion); None
    takes the default."""
    from dataclasses import replace

    masks = store.labels[:1, ..., :4]  # 4 slices

    def first_inputs(rho: float | None, steps: int | None = 2) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        hook = gen.denoiser.register_forward_pre_hook(lambda mod, args: seen.append(args[0].float().clone()))
        gen.generate(masks, store.summaries[:1], torch.Generator().manual_seed(3), steps=steps, autocast=False,
                     noise_corr=rho)
        hook.remove()
        assert len(seen) == 4 * 2
        return seen[::2]  # 2 steps per slice: the first call of each slice sees x_T

    fresh, mixed = first_inputs(0.0), first_inputs(0.8)
    torch.testing.assert_close(mixed[0], fresh[0], atol=0, rtol=0)
    for k in range(1, 4):
        torch.testing.assert_close(mixed[k], 0.8 * mixed[k - 1] + 0.6 * fresh[k], atol=1e-6, rtol=0)
    saved = gen.sampling
    gen.sampling = replace(saved, noise_corr=0.8, steps=2)
    try:
        default = first_inputs(None, steps=None)
    finally:
        gen.sampling = saved
    for a, b in zip(default, mixed, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_harmonizes_organ_levels(gen, store) -> None:
    """level_sigma > 0: the decoded volume goes through harmonize_levels on the solid organs (the
    same draws as without it)."""
    from stage2_ct.harmonize import harmonize_levels, organ_ids

    assert gen.sampling.level_sigma == 3.0  # configs/ldm/phantom.yaml's, through the export and the loader
    masks = store.labels[:2]

    def run(sigma: float | None) -> torch.Tensor:
        return gen.generate(masks, store.summaries[:2], torch.Generator().manual_seed(5), steps=1,
                            autocast=False, level_sigma=sigma)

    plain, steadied = run(0.0), run(2.0)
    want = harmonize_levels(plain, masks.long(), organ_ids(gen.num_classes), 2.0)
    torch.testing.assert_close(steadied, want, atol=1e-4, rtol=0)
    organs = torch.isin(masks, torch.tensor(organ_ids(gen.num_classes)))
    assert bool(organs.any()) and not torch.equal(steadied[organs], plain[organs])
    assert torch.equal(steadied[~organs], plain[~organs])


def test_guidance_one_runs_the_conditional_branch_alone(gen, store) -> None:
    """guidance 1: one branch (batch B per forward); anything else both CFG branches (batch 2B)."""
    masks = store.labels[:2, ..., :1]

    def batch_sizes(guidance: float | None) -> set[int]:
        seen: set[int] = set()
        hook = gen.denoiser.register_forward_pre_hook(lambda mod, args: seen.add(args[0].shape[0]))
        gen.generate(masks, store.summaries[:2], torch.Generator().manual_seed(0), steps=1, autocast=False,
                     guidance=guidance)
        hook.remove()
        return seen

    assert batch_sizes(1.0) == {2} and batch_sizes(1.5) == {4}
    assert batch_sizes(None) == ({2} if gen.sampling.guidance == 1.0 else {4})

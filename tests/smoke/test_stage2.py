"""Stage 2 smoke tests: HU round trip, tiny VAE overfit, tiny LDM fit through the CLI (which
trains a tiny VAE first) and artifact loaders. Generation: test_slice_generator.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data.transforms import hu_to_model, model_to_hu
from shared.labels import default_labels
from shared.vae.autoencoder import SliceAutoencoder, kl_divergence

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "stage2_ct" / "configs"


def test_hu_model_round_trip_exact() -> None:
    hu = torch.arange(-1000, 1001, dtype=torch.float64)
    assert torch.equal(model_to_hu(hu_to_model(hu)).round(), hu)
    assert float((model_to_hu(hu_to_model(hu)) - hu).abs().max()) < 1e-9
    hu32 = hu.float()
    assert torch.equal(model_to_hu(hu_to_model(hu32)).round(), hu32)  # int16 HU survive float32
    assert float(hu_to_model(torch.tensor([-3000.0, 3000.0])).abs().max()) == 1.0  # clipped


def test_vae_shapes_and_scale() -> None:
    vae = SliceAutoencoder(channels=[8, 16, 16], num_res_blocks=[0, 1, 1])
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    mu, logvar = vae.encode(x)
    assert mu.shape == (2, 4, 8, 8) and vae.factor == 4
    vae.set_latent_scale(2.0)
    assert torch.allclose(vae.encode_latents(x), 2 * mu)
    assert vae.decode_latents(vae.encode_latents(x)).abs().max() <= 1.0
    assert float(kl_divergence(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))) == 0.0
    with pytest.raises(ValueError, match="multiple of f"):
        vae.encode(torch.zeros(1, 1, 30, 32))


def test_vae_tiny_overfit(tiny_phantom: Path) -> None:
    """8 slices (32 x 32 at 12 mm, nearly all edges) overfit to RMSE <= 60 HU (the issue's floor)
    from ~740 HU at init: a broken encoder or decoder cannot (a constant image is ~500 HU off).
    One-cycle learning rate (peak 5e-3): ~40 HU after 400 steps (a constant 2e-3: ~80 HU)."""
    from stage2_ct.data import load_cases

    torch.manual_seed(0)
    store = load_cases(tiny_phantom, "train", 1, default_labels(), None)
    hu = store.hu[0, :, :, 4:12].permute(2, 0, 1)[:, None].float().clamp(-1000, 1000)  # (8, 1, 32, 32)
    x = hu_to_model(hu)
    vae = SliceAutoencoder(channels=[32, 32], num_res_blocks=[1, 1])
    opt = torch.optim.Adam(vae.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=400, pct_start=0.1)
    start = float(((vae.reconstruct_hu(hu) - hu) ** 2).mean().sqrt())
    for _ in range(400):
        mu, logvar = vae.encode(x)
        rec = vae.decode(mu)  # posterior mean: the deterministic path the pipeline decodes
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-7 * kl_divergence(mu, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    rmse = float(((vae.reconstruct_hu(hu) - hu) ** 2).mean().sqrt())
    assert rmse <= 60.0 and rmse < start / 5, (start, rmse)

    # bf16 decode (generate_volume's default): the body in bf16, the output conv in fp32 even under
    # an outer autocast (values not rounded to bf16), within 2 HU RMS of the fp32 decode
    with torch.no_grad():
        z = vae.encode_latents(x)
        full = vae.decode_hu(z)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = vae.decode_hu(z, bf16=True)
            raw = vae.decode(z, bf16=True)
    assert fast.dtype == raw.dtype == torch.float32
    assert bool((raw != raw.bfloat16().float()).any())
    err = float(((fast - full) ** 2).mean().sqrt())
    assert 0.0 < err <= 2.0, err


def test_vae_channels_last_training_matches_contiguous() -> None:
    """VAEModule(channels_last=True) (the default) trains in channels-last memory format: the
    weights and the batch are converted at fit start / per step, and the loss and every gradient
    equal those of contiguous training of the same weights on the same batch."""
    from stage2_ct.vae_module import VAEModule

    args = {"vae": {"latent_channels": 4, "channels": [8, 16, 16], "num_res_blocks": [0, 1, 1]}}
    fast, plain = VAEModule(**args), VAEModule(**args, channels_last=False)
    plain.load_state_dict(fast.state_dict())
    fast.on_fit_start()
    plain.on_fit_start()
    conv = fast.vae.encoder[1].weight  # 8 -> 16 channels (conv_in has one input channel: both formats)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.vae.encoder[1].weight.is_contiguous()
    batch = {"image": torch.rand(4, 1, 16, 16) * 2 - 1}
    assert fast._image(batch).is_contiguous(memory_format=torch.channels_last)
    grads = []
    for module in (fast, plain):
        torch.manual_seed(0)  # the same posterior sample
        x = module._image(batch)
        x_rec, mu, logvar = module.vae(x)
        loss = module.reconstruction_loss(x_rec, x) + 1e-6 * kl_divergence(mu, logvar)
        module.vae.zero_grad()
        loss.backward()
        grads.append((loss.detach(), {k: p.grad.clone() for k, p in module.vae.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-6, rtol=1e-5)
    assert grads[0][1].keys() == grads[1][1].keys()
    for k, g in grads[0][1].items():
        torch.testing.assert_close(g, grads[1][1][k], atol=1e-5, rtol=1e-4, msg=k)
    assert any(float(g.abs().max()) > 0 for g in grads[0][1].values())


def test_ldm_fit_exports_artifacts(tiny_stage2: dict[str, Path]) -> None:
    from shared.io.artifact import read_component_spec

    for name in ("vae", "ldm", "ldm_text", "ldm_classemb"):
        assert (tiny_stage2["ldm"].parent / f"{name}.safetensors").is_file(), name
    vae_meta = read_component_spec(tiny_stage2["vae"])["metadata"]
    assert math.isfinite(vae_meta["latent_scale"]) and vae_meta["latent_scale"] > 0
    ldm_meta = read_component_spec(tiny_stage2["ldm"])["metadata"]
    assert ldm_meta["num_classes"] == default_labels().num_classes and ldm_meta["vae"] == "vae"
    assert ldm_meta["weights"] == "ema" and ldm_meta["pooled_text"] is True  # phantom.yaml's choices
    assert ldm_meta["class_embed"] == "ldm_classemb" and ldm_meta["class_embed_dim"] > 0
    inference = read_component_spec(tiny_stage2["ldm"])["inference"]  # phantom.yaml's inference defaults
    assert inference["noise_corr"] == 0.15 and inference["steps"] == 10 and inference["level_sigma"] == 3.0
    assert inference["guidance"] == 1.05 and inference["prev_noise_t"] == 10  # tiny.yaml overrides prev_noise_t only


def test_loaded_ldm_keeps_the_class_map_weights(tiny_stage2: dict[str, Path]) -> None:
    """load_slice_ldm restores the text-painted class map from its component (not a fresh init)."""
    from safetensors.torch import load_file

    from stage2_ct.generator import load_slice_ldm

    module = load_slice_ldm(tiny_stage2["ldm"])
    saved = load_file(str(tiny_stage2["ldm"].parent / "ldm_classemb.safetensors"))
    loaded = module.denoiser.class_embed.state_dict()
    assert saved.keys() == loaded.keys()
    for k, v in saved.items():
        assert torch.equal(loaded[k], v), k



def module_args(stem: Path) -> dict:
    """SliceLDMModule arguments of the architecture an LDM artifact holds (no VAE)."""
    from shared.io.artifact import read_component_spec

    spec = read_component_spec(stem)
    meta = spec["metadata"]
    text = read_component_spec(stem.with_name(meta["text_encoder"]))["init_args"]
    return {"vae_path": None, "vae_config": None, "num_classes": meta["num_classes"],
            "latent_channels": meta["latent_channels"], "unet_overrides": spec["init_args"], "text_encoder": text,
            "scheduler": meta["scheduler"], "pooled_text": meta["pooled_text"],
            "class_embed_dim": meta["class_embed_dim"]}


def test_init_from_starts_a_fit_from_an_artifact(tiny_stage2: dict[str, Path]) -> None:
    """model.init_from: the artifact's UNet, class map and text encoder (and the EMA copies) start
    the fit; an artifact of another architecture is refused with a message naming init_from."""
    from stage2_ct.generator import load_slice_ldm
    from stage2_ct.ldm_module import SliceLDMModule

    ref = load_slice_ldm(tiny_stage2["ldm"])
    args = {**module_args(tiny_stage2["ldm"]), "ema_decay": 0.999, "init_from": str(tiny_stage2["ldm"])}
    fresh = SliceLDMModule(**{**args, "init_from": None})
    module = SliceLDMModule(**args)
    module.setup("fit")
    for part in ("denoiser", "text"):
        want = getattr(ref, part).state_dict()
        differs = [k for k, v in getattr(fresh, part).state_dict().items() if not torch.equal(v, want[k])]
        assert differs, part  # a fresh init differs, so the equalities below are the load's doing
        for got in (getattr(module, part).state_dict(), module.ema[part].state_dict()):
            assert all(torch.equal(got[k], v) for k, v in want.items()), part
    wider = {**args["unet_overrides"], "channels": [c * 2 for c in args["unet_overrides"]["channels"]]}
    with pytest.raises(ValueError, match="init_from"):
        SliceLDMModule(**{**args, "unet_overrides": wider}).setup("fit")


def test_decoder_only_fine_tuning_keeps_the_latents(tiny_stage2: dict[str, Path], tmp_path: Path) -> None:
    """freeze_encoder + init_from (decoder-only fine-tuning of a VAE artifact): the CLI fit changes the
    decoder only; encoder and latent scale stay bit-identical, so an LDM trained on the artifact's
    latents stays valid with the new decoder. An artifact of another architecture is refused with a
    message naming model.init_from."""
    from shared.io.artifact import load_component
    from stage2_ct import cli
    from stage2_ct.vae_module import VAEModule

    out = tmp_path / "vae_ft"
    cli.main(args=[
        "fit", "-c", str(CONFIGS / "vae" / "phantom.yaml"), "-c", str(CONFIGS / "vae" / "tiny.yaml"),
        f"--data.manifest={tiny_stage2['manifest']}", f"--trainer.default_root_dir={tmp_path}",
        f"--model.init_args.init_from={tiny_stage2['vae']}", "--model.init_args.freeze_encoder=true",
        "--model.init_args.lr=1e-2", f"--model.init_args.export_path={out}",
    ])
    before, after = load_component(tiny_stage2["vae"]).state_dict(), load_component(out).state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed), sorted(changed)[:5]
    assert float(after["latent_scale"]) == float(before["latent_scale"])
    meta = load_component(out).artifact_metadata  # the lineage, as the LDM artifact records it
    assert meta["init_from"] == str(tiny_stage2["vae"])
    assert meta["init_trained_steps"] == load_component(tiny_stage2["vae"]).artifact_metadata["trained_steps"]

    small = {"latent_channels": 4, "channels": [8, 16, 32], "num_res_blocks": [0, 1, 1]}
    started, resumed, ckpt = VAEModule(vae=small), VAEModule(vae=small), {}
    started.init_trained_steps = meta["init_trained_steps"]
    started.on_save_checkpoint(ckpt)
    resumed.init_trained_steps = 99_999  # what setup reads when init_from now holds a later export
    resumed.on_load_checkpoint(ckpt)  # a resume keeps the lineage of the run's start
    assert resumed.init_trained_steps == meta["init_trained_steps"]

    with pytest.raises(ValueError, match="model.init_from"):  # another architecture is refused by name
        VAEModule(vae=small, init_from=str(out), freeze_encoder=True).setup("fit")


def test_evaluate_refuses_a_broken_ldm_before_any_work(tiny_stage2: dict[str, Path], tmp_path: Path,
                                                       monkeypatch) -> None:
    """stage2_ct.evaluate loads the LDM before the VAE evaluation: an artifact whose text encoder
    is missing fails at once with the missing file's name, and no result is written."""
    import shutil

    from shared.io.artifact import ArtifactError
    from stage2_ct import evaluate

    broken = tmp_path / "ldm"
    for f in tiny_stage2["ldm"].parent.glob("ldm*"):
        if not f.name.startswith("ldm_text"):
            shutil.copy(f, broken.parent / f.name)

    def reached(*_a, **_k):
        raise AssertionError("the VAE evaluation ran before the LDM was loaded")

    monkeypatch.setattr(evaluate, "evaluate_vae", reached)
    out = tmp_path / "eval"
    with pytest.raises(ArtifactError, match="ldm_text"):
        evaluate.main(["--manifest", str(tiny_stage2["manifest"]), "--vae", str(tiny_stage2["vae"]),
                       "--ldm", str(broken), "--out", str(out), "--split", "train", "--n-cases", "1"])
    assert not (out / "stage2_eval.json").exists()


def test_channels_last_denoiser_matches_contiguous(tiny_stage2: dict[str, Path]) -> None:
    """load_slice_ldm puts the denoiser (and load_vae the VAE) in channels-last format (faster on
    CPU); their outputs equal those of contiguous copies of the same weights."""
    import copy

    from stage2_ct.conditioning import mask_to_latent_grid
    from stage2_ct.generator import load_slice_ldm

    module = load_slice_ldm(tiny_stage2["ldm"])
    conv = module.denoiser.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = copy.deepcopy(module.denoiser).to(memory_format=torch.contiguous_format)
    torch.manual_seed(0)
    from stage2_ct.conditioning import text_inputs

    c = module.latent_channels
    text = text_inputs(module.text, ["tumor: none. phase: portal venous.", "liver: fatty. phase: non contrast."],
                       module.pooled_text)
    labels = torch.randint(0, module.num_classes, (2, 32, 32))
    seg = mask_to_latent_grid(labels, (8, 8), module.num_classes)
    args = (torch.randn(2, c, 8, 8), torch.tensor([10, 90]), torch.randn(2, c, 8, 8), seg,
            torch.tensor([[0.2], [0.7]]), torch.tensor([5, 5]))
    with torch.no_grad():
        torch.testing.assert_close(module.denoiser(*args, **text), plain(*args, **text), atol=1e-5, rtol=1e-4)
    vae_conv = next(m for m in module.vae.decoder.modules() if isinstance(m, torch.nn.Conv2d)).weight
    assert vae_conv.is_contiguous(memory_format=torch.channels_last)  # load_vae's format
    z = torch.randn(3, c, 8, 8)
    plain_vae = copy.deepcopy(module.vae).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        torch.testing.assert_close(module.vae.decode_hu(z), plain_vae.decode_hu(z), atol=1e-2, rtol=0)  # HU


def test_pooled_text_reaches_the_denoiser() -> None:
    """With pooled_text the pooled embedding enters the time embedding: same tokens, different
    pooled vector -> different output (a global path for phase / fatty liver)."""
    from stage2_ct.ldm_module import SliceLDMModule

    torch.manual_seed(0)
    module = SliceLDMModule(
        vae_path=None, vae_config=None, latent_channels=4, pooled_text=True, ema_decay=0.9,
        unet_overrides=dict(channels=[8, 16, 32], num_res_blocks=[0, 1, 1],
                            attention_levels=[False, False, True], head_dim=8, norm_groups=4),
        text_encoder=dict(text_cfg=dict(width=16, heads=2, layers=1), embed_dim=16)).eval()
    text = module.encode_text(["tumor: none. phase: portal venous."])
    assert text["pooled"].shape == (1, 16)
    x, prev = torch.randn(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    seg = torch.zeros(1, 12, 8, 8)
    args = (x, torch.tensor([500]), prev, seg, torch.tensor([[0.5]]), torch.tensor([100]))
    with torch.no_grad():
        a = module.denoiser(*args, **text)
        b = module.denoiser(*args, **{**text, "pooled": text["pooled"] + 1.0})
    assert not torch.allclose(a, b)
    assert set(module.ema.keys()) == {"denoiser", "text"}


def test_masks_round_trip_like_pipeline(tiny_phantom: Path) -> None:
    """Training masks went down to the stage-1 grid and back (blockier than the crisp labels)."""
    from stage2_ct.data import load_cases, roundtrip_labels

    crisp = load_cases(tiny_phantom, "train", 1, default_labels(), None).labels[0]
    rt = roundtrip_labels(crisp, (2, 2, 2), default_labels().num_classes, default_labels().tumor_ids)
    assert rt.shape == crisp.shape and rt.dtype == torch.uint8
    agree = float((rt == crisp).float().mean())
    assert 0.6 < agree < 1.0
    assert set(np.unique(rt.numpy())) <= set(range(default_labels().num_classes))


def test_nan_loss_names_the_step() -> None:
    from stage2_ct.common import NonFiniteLossError, check_finite

    with pytest.raises(NonFiniteLossError, match="step 17"):
        check_finite(torch.tensor(float("nan")), 17)


def test_checkpoint_keeps_the_fine_tune_start(tiny_stage2: dict[str, Path]) -> None:
    """A resumed in-place fine-tune exports the trained_steps of the artifact it started from."""
    from stage2_ct.ldm_module import SliceLDMModule

    module = SliceLDMModule(**module_args(tiny_stage2["ldm"]))
    ckpt: dict = {"state_dict": {}}
    module.init_trained_steps = 7
    module.on_save_checkpoint(ckpt)
    resumed = SliceLDMModule(**module_args(tiny_stage2["ldm"]))
    assert resumed.init_trained_steps is None
    resumed.on_load_checkpoint(ckpt)
    assert resumed.init_trained_steps == 7


def test_module_trains_the_inference_component(tiny_stage2: dict[str, Path]) -> None:
    """SliceLDMModule wraps a SliceGenerator (`model`): the weights it trains are the ones its
    generator samples with; a checkpoint of the older layout (denoiser.* / text.* at the top)
    loads into it unchanged."""
    from stage2_ct.generator import SliceGenerator
    from stage2_ct.ldm_module import SliceLDMModule, upgrade_state_dict
    from stage2_ct.vae_module import load_vae

    module = SliceLDMModule(**module_args(tiny_stage2["ldm"]))
    assert isinstance(module.model, SliceGenerator) and module.denoiser is module.model.denoiser
    assert module.text is module.model.text and module.vae is None
    keys = module.state_dict().keys()
    assert any(k.startswith("model.denoiser.unet.") for k in keys) and not any(k.startswith("denoiser.") for k in keys)
    vae = load_vae(str(tiny_stage2["vae"]))
    assert module.generator(vae, ema=False) is module.model and module.vae is vae
    old = {k.removeprefix("model."): v.clone() + 1.0 for k, v in module.state_dict().items()
           if k.startswith(("model.denoiser.", "model.text."))}
    fresh = SliceLDMModule(**module_args(tiny_stage2["ldm"]))
    fresh.load_state_dict(upgrade_state_dict(dict(old)), strict=True)
    for k, v in old.items():
        assert torch.equal(fresh.state_dict()["model." + k], v), k

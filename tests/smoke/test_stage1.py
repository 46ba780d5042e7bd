"""Stage 1 smoke tests: configs, CLI in-process, text conditioning, a tiny overfit, resume."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import lightning as L
import pytest
import torch

from stage1_mask import cli
from stage1_mask.data import MaskDataModule
from stage1_mask.metrics import dice_per_class
from stage1_mask.module import MaskDiffusionModule
from stage1_mask.sampler import MaskSampler, export_stage1, load_stage1, sample_masks

CONFIGS = Path(cli.__file__).parent / "configs"
BASE, TINY = str(CONFIGS / "phantom.yaml"), str(CONFIGS / "tiny.yaml")

TINY_SAMPLER = dict(
    unet_preset="stage1_phantom",
    unet_overrides=dict(channels=[8, 16, 32], num_res_blocks=[0, 1, 1],
                        attention_levels=[False, False, True], head_dim=8, norm_groups=4),
    text_encoder=dict(text_cfg=dict(width=32, heads=2, layers=1), embed_dim=32),
    scheduler=dict(num_train_timesteps=100),
)


@pytest.mark.parametrize("extra", [[], [TINY], [str(CONFIGS / "full.yaml")]],
                         ids=["phantom", "phantom+tiny", "phantom+full"])
def test_configs_parse(extra: list[str]) -> None:
    args = ["fit", "-c", BASE, *[a for c in extra for a in ("-c", c)], "--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli.main(args=args)
    assert exit_info.value.code in (0, None)
    assert "sampler:" in out.getvalue()


def test_cli_fast_dev_run(tiny_phantom: Path, tmp_path: Path) -> None:
    run = cli.main(args=["fit", "-c", BASE, "-c", TINY, "--data.manifest", str(tiny_phantom),
                         "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert run.trainer.global_step == 1
    assert run.model.hparams.num_classes == 12  # linked from labels.yaml via the data module
    assert run.model.hparams.class_names[11] == "colorectal_tumor"


def test_masks_differ_when_only_text_differs() -> None:
    torch.manual_seed(0)
    sampler = MaskSampler(12, **TINY_SAMPLER).eval()
    texts = ["tumor: sigmoid colon 40 mm. spleen: normal.", "tumor: none. spleen: enlarged."]

    def draw(text: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(7)
        return sample_masks(sampler, [text], gen, steps=2, guidance=1.0, grid=[16, 16, 8], bf16=False)

    a, a_again, b = draw(texts[0]), draw(texts[0]), draw(texts[1])
    assert a.shape == (1, 12, 16, 16, 8)
    torch.testing.assert_close(a.sum(1), torch.ones(1, 16, 16, 8))
    assert torch.equal(a, a_again)  # deterministic under a fixed generator
    assert not torch.equal(a.argmax(1), b.argmax(1))  # the text reaches the UNet


def test_artifact_roundtrip(tmp_path: Path) -> None:
    """The artifact rebuilds the sampler; its inference block is the sampling default."""
    from shared.io.artifact import ArtifactError
    from stage1_mask.sampler import MaskSampling

    torch.manual_seed(0)
    sampler = MaskSampler(12, **TINY_SAMPLER).eval()
    meta = {"grid": [16, 16, 8], "spacing": [24.0, 24.0, 50.0], "class_names": [str(i) for i in range(12)]}
    export_stage1(sampler, tmp_path / "s1", meta, half=False, inference=MaskSampling(steps=2, guidance=2.5))
    loaded = load_stage1(tmp_path / "s1")
    assert loaded.artifact_metadata["grid"] == [16, 16, 8]
    assert loaded.sampling == MaskSampling(steps=2, guidance=2.5)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = sample_masks(sampler, ["tumor: rectum 30 mm."], gen(), steps=2, guidance=2.5, grid=[16, 16, 8])
    b = sample_masks(loaded, ["tumor: rectum 30 mm."], gen())  # steps and guidance from the artifact
    torch.testing.assert_close(a, b)
    c = sample_masks(loaded, ["tumor: rectum 30 mm."], gen(), guidance=1.0)
    assert not torch.allclose(b, c)  # the default guidance was used above, not 1
    spec = (tmp_path / "s1.yaml").read_text()
    (tmp_path / "s1.yaml").write_text(spec.replace("  guidance: 2.5", "  guidance: 2.5\n  guidence: 3"))
    with pytest.raises(ArtifactError, match="guidence"):
        load_stage1(tmp_path / "s1")


def test_one_generator_per_sample_makes_masks_batch_independent() -> None:
    """fp32: a mask sampled in a batch of 4 (one generator per prompt) equals the mask sampled alone."""
    torch.manual_seed(0)
    sampler = MaskSampler(12, **TINY_SAMPLER).eval()
    texts = ["tumor: rectum 30 mm.", "tumor: none.", "spleen: enlarged.", "tumor: sigmoid colon 40 mm."]
    kw = {"steps": 3, "guidance": 2.0, "grid": [16, 16, 8], "bf16": False}
    batch = sample_masks(sampler, texts, [torch.Generator().manual_seed(10 + i) for i in range(4)], **kw)
    for i in range(4):
        alone = sample_masks(sampler, texts[i:i + 1], [torch.Generator().manual_seed(10 + i)], **kw)
        assert torch.equal(alone.argmax(1)[0], batch.argmax(1)[i]), i
    shared = sample_masks(sampler, texts, torch.Generator().manual_seed(10), **kw)
    assert not torch.equal(shared.argmax(1)[1], batch.argmax(1)[1])  # one generator: other draws


def test_tiny_overfits_two_cases(tiny_phantom: Path) -> None:
    L.seed_everything(0)
    dm = MaskDataModule(str(tiny_phantom), grid=[16, 16, 8], batch_size=2, max_shift=0,
                        train_cases=2, val_cases=2, repeats=50, cache=False)
    model = MaskDiffusionModule(num_classes=12, grid=[16, 16, 8], sampler=TINY_SAMPLER, lr=3e-3,
                                text_lr=1e-3, warmup_steps=10, p_uncond=0.0, ema_decay=0.9,
                                t_power=0.0, ce_weight=1.0)
    trainer = L.Trainer(max_steps=250, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    cases = dm.cases["train"][:2]
    target = torch.stack([torch.from_numpy(c.labels.astype("int64")) for c in cases])
    gen = torch.Generator().manual_seed(0)
    probs = sample_masks(model, [c.findings.summary() for c in cases], gen, steps=10, guidance=1.0)
    dice = dice_per_class(probs.argmax(1), target, 12)
    fg = (probs.argmax(1) > 0) == (target > 0)
    voxel_dice = float((probs.argmax(1) == target).float().mean())
    assert voxel_dice > 0.9 and fg.float().mean() > 0.9, (voxel_dice, dice)
    assert float(dice[1:].nanmean()) > 0.9, dice


def test_resume_continues_at_the_right_step(tiny_phantom: Path, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    callbacks = ('[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
                 f'{{"dirpath": "{ckpt_dir}", "save_last": true, "save_top_k": 0, '
                 '"every_n_train_steps": 1}}]')
    common = ["fit", "-c", BASE, "-c", TINY, "--data.manifest", str(tiny_phantom),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.callbacks", callbacks,
              "--ckpt_path", "last", "--trainer.limit_val_batches", "0"]
    first = cli.main(args=[*common, "--trainer.max_steps", "2"])
    assert first.trainer.global_step == 2
    state = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    second = cli.main(args=[*common, "--trainer.max_steps", "3"])
    assert second.trainer.global_step == 3
    assert int(second.model.ema_updates) == 3  # EMA state came back with the checkpoint


def test_logit_adjustment_undoes_class_weights() -> None:
    """The sampler adds prior_correction * logit_bias (= -log w_k, set from the loss weights) to
    the x0 logits: a strongly favoured class takes over only when the correction is applied."""
    from stage1_mask.module import class_weights_from_frequencies

    freq = torch.tensor([0.5, 0.2, 0.2, 0.1])
    w = class_weights_from_frequencies(freq, cap=3.0, overrides={3: 10.0})
    assert float(w[3]) == 10.0 and float(w[0]) == 1.0 and 1.0 <= float(w[1]) <= 3.0
    torch.manual_seed(0)
    sampler = MaskSampler(12, **TINY_SAMPLER).eval()
    sampler.logit_bias[5] = 50.0  # as if class 5 had weight e^-50: the correction favours it
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    kw = {"steps": 2, "guidance": 1.0, "grid": [16, 16, 8], "bf16": False}
    on = sample_masks(sampler, ["tumor: none."], gen(), prior_correction=1.0, **kw).argmax(1)
    off = sample_masks(sampler, ["tumor: none."], gen(), prior_correction=0.0, **kw).argmax(1)
    assert bool((on == 5).all())
    assert float((off == 5).float().mean()) < 0.5


def test_evaluate_script_sweeps_and_scores_cleaned_masks(tiny_phantom: Path, tmp_path: Path) -> None:
    """stage1_mask.evaluate end to end on an untrained tiny artifact: sweep rows per
    (steps, guidance, prior correction), true / shuffled / cleaned scores, markdown."""
    import json

    from stage1_mask import evaluate

    torch.manual_seed(0)
    from stage1_mask.sampler import MaskSampling

    meta = {"grid": [16, 16, 8], "spacing": [24.0, 24.0, 50.0], "class_names": [str(i) for i in range(12)]}
    export_stage1(MaskSampler(12, **TINY_SAMPLER).eval(), tmp_path / "s1", meta, half=False,
                  inference=MaskSampling(steps=2, guidance=2.0))
    out = tmp_path / "eval"
    assert evaluate.main(["--artifact", str(tmp_path / "s1"), "--manifest", str(tiny_phantom),
                          "--split", "train", "--n", "2", "--sweep-steps", "2", "--sweep-guidance", "1",
                          "--sweep-prior-correction", "0", "1", "--sweep-split", "train", "--sweep-n", "2",
                          "--clean-min-voxels", "4", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert [r["prior_correction"] for r in report["sweep"]] == [0.0, 1.0]
    assert all("metrics_clean" in r for r in report["sweep"])
    for key in ("true_text", "true_text_clean", "shuffled_text"):
        assert report[key]["n"] == 2 and 0.0 <= report[key]["align"]["tumor_sites"] <= 1.0
    # cleaning never adds colon/tumour components
    assert report["true_text_clean"]["colon_components_mean"] <= report["true_text"]["colon_components_mean"]
    assert "islands < 4 removed" in (out / "eval.md").read_text()


def test_size_control_gives_the_reported_tumour_volume() -> None:
    """With size control ("argmax") the sampled tumour takes exactly the voxels of the reported
    diameter (sphere volume / voxel volume), even for an untrained network; without it, not."""
    from stage1_mask.size import target_tumor_voxels

    torch.manual_seed(0)
    sampler = MaskSampler(12, **TINY_SAMPLER).eval()
    sampler.artifact_metadata = {"spacing": [24.0, 24.0, 50.0]}
    texts = ["tumor: sigmoid colon 150 mm. spleen: normal.", "tumor: rectum 100 mm. spleen: normal."]
    kw = {"steps": 2, "guidance": 2.0, "grid": [16, 16, 8], "bf16": False}
    want = target_tumor_voxels(texts, [24.0, 24.0, 50.0]).nansum(1).round().long()
    on = sample_masks(sampler, texts, torch.Generator().manual_seed(1), size_control="argmax", **kw)
    off = sample_masks(sampler, texts, torch.Generator().manual_seed(1), size_control=False, **kw)
    tumor = 11
    got_on = (on.argmax(1) == tumor).flatten(1).sum(1)
    got_off = (off.argmax(1) == tumor).flatten(1).sum(1)
    # exact but for float rounding at the threshold (a voxel or two)
    assert ((got_on - want).abs() <= 2).all(), (got_on, want)
    assert ((got_off - want).abs() > 2).any(), (got_off, want)

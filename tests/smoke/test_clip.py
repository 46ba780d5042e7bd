"""Report <-> anatomy CLIP: configs, CLI fit + export + reload, a tiny overfit, zero-shot eval."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared.findings import SITES, Findings, Tumor
from shared.io.artifact import load_component
from shared.text.encoder import TextEncoder
from stage1_mask import clip, clip_eval
from stage1_mask.clip_module import ClipModule, MaskEncoder
from stage1_mask.data import MaskDataModule

CONFIGS = Path(clip.__file__).parent / "configs" / "clip"
BASE, TINY = str(CONFIGS / "phantom.yaml"), str(CONFIGS / "tiny.yaml")
TINY_TEXT = dict(text_cfg=dict(width=32, heads=2, layers=1), embed_dim=32)
TINY_MASK = dict(channels=[8, 16], pooled_shape=[2, 2, 2], norm_groups=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy CI machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("extra", [[], [TINY]], ids=["phantom", "phantom+tiny"])
def test_configs_parse(extra: list[str]) -> None:
    args = ["fit", "-c", BASE, *[a for c in extra for a in ("-c", c)], "--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        clip.main(args=args)
    assert exit_info.value.code in (0, None)
    assert "mask_encoder:" in out.getvalue()


def test_mask_encoder_label_and_prob_paths_agree() -> None:
    torch.manual_seed(0)
    enc = MaskEncoder(num_classes=5, embed_dim=8, channels=[4], pooled_shape=[2, 2, 2], norm_groups=2)
    for shape in [(2, 8, 8, 6), (2, 7, 8, 5)]:  # bincount fast path, then the one-hot path
        labels = torch.randint(0, 5, shape)
        probs = F.one_hot(labels, 5).movedim(-1, 1).float()
        frac = enc.fractions(labels)
        torch.testing.assert_close(frac.sum(1), torch.ones_like(frac[:, 0]))
        torch.testing.assert_close(frac, enc.fractions(probs))
        torch.testing.assert_close(enc(labels), enc(probs))
    assert sum(p.numel() for p in MaskEncoder().parameters()) < 1_000_000  # default stays small


def test_zero_shot_oracle_is_perfect() -> None:
    """Mask embeddings equal to the true summary's text embedding -> every probe picks the truth."""
    torch.manual_seed(0)
    text = TextEncoder(**TINY_TEXT, frozen=True)
    findings = [Findings(tumors=(Tumor(s, 30.0),), kidney_left=k, spleen=sp)
                for s, k, sp in zip(SITES, ["present", "absent"] * 3, ["normal", "enlarged"] * 3, strict=False)]
    findings.append(Findings(bladder="distended"))
    mask_f = clip_eval.encode_texts(text, [f.summary() for f in findings])
    scores = clip_eval.zero_shot(text, mask_f, findings)
    assert scores["tumor_site"]["n"] == len(SITES)  # only cases with exactly one tumour
    assert all(s["accuracy"] == 1.0 for s in scores.values()), scores
    assert clip_eval.retrieval_top1(text, mask_f, findings) == 1.0


def test_tiny_overfit_loss_decreases(tiny_phantom: Path) -> None:
    torch.manual_seed(0)
    data = MaskDataModule(str(tiny_phantom), grid=[16, 16, 8], max_shift=0, cache=False)
    data.setup("fit")
    cases = data.cases["train"][:4]
    batch = {"labels": torch.stack([torch.from_numpy(c.labels).long() for c in cases]),
             "summary": [c.findings.summary() for c in cases], "report": [c.report for c in cases]}
    assert len(set(batch["summary"])) == 4
    model = ClipModule(TINY_TEXT, TINY_MASK, report_prob=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, out = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    assert out["acc"].item() == 1.0


def test_cli_fit_export_reload_and_eval(tiny_phantom: Path, tmp_path: Path) -> None:
    stem = tmp_path / "text_clip_tiny"
    run = clip.main(args=["fit", "-c", BASE, "-c", TINY, "--data.manifest", str(tiny_phantom),
                          "--trainer.default_root_dir", str(tmp_path), "--model.export_path", str(stem)])
    assert run.trainer.global_step == 2
    assert run.model.hparams.num_classes == 12  # linked from labels.yaml via the data module
    assert run.model.hparams.grid == [16, 16, 8]
    for suffix in (".safetensors", ".yaml"):
        assert stem.with_suffix(suffix).is_file()
        assert (tmp_path / f"text_clip_tiny_mask{suffix}").is_file()

    text = load_component(stem)
    assert isinstance(text, TextEncoder) and text.frozen
    assert text.artifact_metadata["global_step"] == 2
    texts = ["tumor: sigmoid colon 40 mm. spleen: normal.", "tumor: none. bladder: distended."]
    trained = run.model.text_encoder.set_frozen(True).eval()  # as exported: frozen
    with torch.no_grad():
        for a, b in zip(trained.encode(texts), text.encode(texts), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        mask = load_component(tmp_path / "text_clip_tiny_mask").eval()
        labels = torch.stack([torch.from_numpy(c.labels).long() for c in run.datamodule.cases["train"][:2]])
        torch.testing.assert_close(mask(labels), run.model.mask_encoder.eval()(labels), rtol=0, atol=0)

    md = tmp_path / "zs.md"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = clip_eval.main(["--artifact", str(stem), "--manifest", str(tiny_phantom),
                                 "--split", "test", "--markdown", str(md)])
    assert json.loads(out.getvalue())["cases"] == result["cases"] >= 1
    assert set(result["zero_shot"]) == {"tumor_site", "spleen", "kidney_left", "kidney_right", "bladder"}
    assert "| spleen |" in md.read_text()


def test_hard_negative_changes_one_decidable_field() -> None:
    f = Findings(tumors=(Tumor("sigmoid", 40.0),), kidney_right="absent")
    allowed = {c.summary() for probe in clip_eval.PROBES.values() for c in probe(f)[0]} - {f.summary()}
    negatives = {ClipModule.hard_negative(f) for _ in range(60)}
    assert negatives <= allowed and len(negatives) > 3


def test_resume_from_last_checkpoint(tiny_phantom: Path, tmp_path: Path) -> None:
    resume = tmp_path / "resume.yaml"
    resume.write_text(
        "ckpt_path: last\n"
        "trainer:\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {tmp_path / 'ckpt'}, save_last: true, save_top_k: 0}}\n")
    args = ["fit", "-c", BASE, "-c", TINY, "-c", str(resume), "--data.manifest", str(tiny_phantom),
            "--trainer.default_root_dir", str(tmp_path)]
    assert clip.main(args=args).trainer.global_step == 2
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    run = clip.main(args=[*args, "--trainer.max_steps", "3"])
    assert run.trainer.ckpt_path == str(tmp_path / "ckpt" / "last.ckpt")  # resumed, not restarted
    assert run.trainer.global_step == 3

"""guidegen-export: a bundle from Lightning checkpoints of both stages (tiny fits) that
guidegen-generate then uses; artifacts are referenced where they are."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def checkpoint_callback(folder: Path) -> str:
    return ('[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
            f'{{"dirpath": "{folder}", "save_last": true, "save_top_k": 0, "every_n_train_steps": 1}}}}]')


def test_bundle_from_checkpoints_generates(tiny_phantom: Path, tiny_stage2: dict[str, Path], tmp_path: Path,
                                           capsys) -> None:
    from pipelines import export, run
    from stage1_mask import cli as cli1
    from stage2_ct import cli as cli2

    cli1.main(args=["fit", "-c", str(ROOT / "stage1_mask/configs/phantom.yaml"),
                    "-c", str(ROOT / "stage1_mask/configs/tiny.yaml"), "--data.manifest", str(tiny_phantom),
                    "--trainer.default_root_dir", str(tmp_path / "s1"), "--trainer.max_steps", "2",
                    "--trainer.limit_val_batches", "0", "--trainer.callbacks", checkpoint_callback(tmp_path / "c1")])
    cli2.main(args=["fit", "-c", str(ROOT / "stage2_ct/configs/ldm/phantom.yaml"),
                    "-c", str(ROOT / "stage2_ct/configs/ldm/tiny.yaml"), f"--data.manifest={tiny_phantom}",
                    f"--model.init_args.vae_path={tiny_stage2['vae']}", "--trainer.enable_checkpointing=true",
                    f"--trainer.default_root_dir={tmp_path / 's2'}", "--trainer.max_steps=2",
                    f"--trainer.callbacks={checkpoint_callback(tmp_path / 'c2')}"])
    out = tmp_path / "bundle"
    assert export.main(["--stage1", str(tmp_path / "c1/last.ckpt"), "--ldm", str(tmp_path / "c2/last.ckpt"),
                        "--ct-grid", "32", "32", "16", "--out", str(out), "--name", "mine"]) == 0
    spec = yaml.safe_load((out / "bundle.yaml").read_text())
    assert spec["components"] == {"stage1": "stage1", "stage2": "ldm"} and spec["name"] == "mine"
    assert {"vae.safetensors", "ldm_text.yaml", "ldm_classemb.safetensors", "stage1.safetensors"} <= set(spec["files"])
    assert spec["geometry"]["ct_spacing"] == [12.0, 12.0, 25.0]
    stage1_spec = yaml.safe_load((out / "stage1.yaml").read_text())
    assert stage1_spec["inference"]["size_control"] == "per_tumour"
    prompts = tmp_path / "p.txt"
    prompts.write_text("4 cm mass in the sigmoid colon.\n")
    capsys.readouterr()
    assert run.main(["--prompts", str(prompts), "--out", str(tmp_path / "gen"), "--bundle", str(out / "bundle.yaml"),
                     "--stage1-steps", "2", "--stage2-steps", "2", "--precision", "fp32", "--no-preview"]) == 0
    record = json.loads((tmp_path / "gen/cases/p0001/findings.json").read_text())
    assert record["settings"]["bundle"] == str((out / "bundle.yaml").resolve())

    # artifacts are referenced in place; an LDM artifact with --vae is refused
    again = tmp_path / "again"
    assert export.main(["--stage1", str(out / "stage1"), "--ldm", str(out / "ldm"), "--ct-grid", "32", "32", "16",
                        "--out", str(again)]) == 0
    assert yaml.safe_load((again / "bundle.yaml").read_text())["components"]["stage2"] == "../bundle/ldm"
    assert export.main(["--stage1", str(out / "stage1"), "--ldm", str(out / "ldm"), "--vae", str(out / "vae"),
                        "--ct-grid", "32", "32", "16", "--out", str(again)]) == 2
    assert "--vae goes with an LDM checkpoint" in capsys.readouterr().err

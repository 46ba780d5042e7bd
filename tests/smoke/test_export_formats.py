"""guidegen-generate --format nnunet | monai on the tiny bundle: nnU-Net v2's own integrity check,
MONAI's datalist loader, a resumed / extended run rewriting numTraining."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.labels import default_labels

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--stage1-steps", "2", "--stage2-steps", "2", "--precision", "fp32", "--no-preview"]


def generate(bundle: Path, out: Path, reports: list[str], *extra: str, name: str = "p.txt") -> int:
    from pipelines import run

    prompts = out.parent / name
    prompts.write_text("\n".join(reports) + "\n", encoding="utf-8")
    return run.main(["--prompts", str(prompts), "--out", str(out), "--bundle", str(bundle), *FAST, *extra])


def test_nnunet_dataset_passes_nnunets_own_check(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2")
    out = tmp_path / "nn"
    args = ("--format", "nnunet", "--dataset-id", "7", "--dataset-name", "Synth")
    assert generate(tiny_bundle, out, ["4 cm sigmoid mass.", "Rectal mass, 3 cm."], *args) == 0
    root = out / "Dataset007_Synth"
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["p0001_0000.nii.gz", "p0002_0000.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == ["p0001.nii.gz", "p0002.nii.gz"]
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {n: i for i, n in enumerate(default_labels().names)} and dataset["numTraining"] == 2
    check = subprocess.run([sys.executable, str(ROOT / "tests/tools/nnunet_verify.py"), str(root)],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout[-1500:] + check.stderr[-1500:]
    # an extended run (another prompt file, same folder) adds its cases and rewrites numTraining
    assert generate(tiny_bundle, out, [json.dumps({"id": "x1", "report": "Splenomegaly."})], *args, name="q.jsonl") == 0
    rows = [json.loads(line)["case_id"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows == ["p0001", "p0002", "x1"]
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == 3
    # the same ids with other prompts would overwrite or skip someone else's cases: refused
    assert generate(tiny_bundle, out, ["Fatty liver."], *args, name="r.txt") == 2


def test_monai_datalist_loads_the_same_arrays(tiny_bundle: Path, tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    from shared.io.nifti import read_nifti

    out = tmp_path / "mo"
    assert generate(tiny_bundle, out, ["4 cm sigmoid mass.", "Fatty liver, no colonic mass."], "--format", "monai") == 0
    items = load_decathlon_datalist(str(out / "datalist.json"), data_list_key="training")
    assert [Path(i["image"]).parent.name for i in items] == ["p0001", "p0002"]
    load = LoadImaged(keys=["image", "label"], image_only=True)
    for item in items:
        loaded = load(item)
        ct, _ = read_nifti(item["image"])
        labels, _ = read_nifti(item["label"])
        np.testing.assert_array_equal(np.asarray(loaded["image"]), ct)
        np.testing.assert_array_equal(np.asarray(loaded["label"]), labels)


def test_bad_dataset_name_is_refused_before_anything_is_written(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad"
    assert generate(tiny_bundle, out, ["4 cm sigmoid mass."], "--format", "nnunet", "--dataset-name", "a b") == 2
    assert "--dataset-name" in capsys.readouterr().err and not out.exists()

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.data.build import CasePaths, build_dataset, case_id
from shared.data.manifest import read_manifest, validate_manifest
from shared.data.transforms import DownsampleLabelsd, case_transforms, hu_to_model, model_to_hu
from shared.io.nifti import read_nifti


def test_manifest_validates_and_has_splits(tiny_phantom):
    entries = validate_manifest(tiny_phantom)
    assert len(entries) == 10
    assert {e.split for e in entries} == {"train", "val", "test"}
    for e in entries:
        record = json.loads((tiny_phantom.parent / "findings" / f"{e.case_id}.json").read_text())
        assert record["findings"] == e.findings.to_dict()
        assert e.report.strip()


def test_build_is_resumable_and_parallel(tmp_path):
    root = tmp_path / "ds"
    build_dataset(root, 4, jobs=2, seed=3, grid="small")
    victim = CasePaths.under(root, case_id(2))
    ct_before = read_nifti(victim.image)[0]
    keep = CasePaths.under(root, case_id(1)).image
    mtime = keep.stat().st_mtime_ns
    victim.findings.unlink()  # an interrupted case: findings (written last) missing
    victim.image.write_bytes(b"half-written")
    build_dataset(root, 4, jobs=1, seed=3, grid="small")
    assert np.array_equal(read_nifti(victim.image)[0], ct_before)  # same case regenerated
    assert keep.stat().st_mtime_ns == mtime  # finished cases untouched
    assert len(read_manifest(root / "manifest.jsonl")) == 4
    with pytest.raises(SystemExit, match="refusing"):
        build_dataset(root, 4, jobs=1, seed=4, grid="small")


def test_transforms_load_ras_model_space(tiny_phantom):
    e = read_manifest(tiny_phantom)[0]
    t = case_transforms()
    d = t({"image": str(e.image), "label": str(e.label)})
    img, lab = d["image"], d["label"]
    assert img.shape == lab.shape == (1, 32, 32, 16)
    assert -1.0 <= float(img.min()) and float(img.max()) <= 1.0
    ct, affine = read_nifti(e.image)
    np.testing.assert_allclose(np.asarray(img.affine), affine, atol=1e-4)
    torch.testing.assert_close(model_to_hu(img[0]).float(),
                               torch.as_tensor(ct, dtype=torch.float32).clip(-1000, 1000), atol=0.05, rtol=0)
    padded = case_transforms(spatial_size=(40, 30, 16))({"image": str(e.image), "label": str(e.label)})
    assert padded["image"].shape == (1, 40, 30, 16) and float(padded["image"][0, 0, 0, 0]) == -1.0
    low = DownsampleLabelsd("label", (16, 16, 8), 12, priority_ids=[11])(d)["label_lowres"]
    assert low.shape == (1, 16, 16, 8) and low.dtype == torch.uint8


def test_hu_model_space_round_trip_is_exact():
    hu = torch.arange(-1000, 1001, dtype=torch.float64)
    torch.testing.assert_close(model_to_hu(hu_to_model(hu)), hu, atol=1e-9, rtol=0)
    assert float(hu_to_model(torch.tensor(3000.0))) == 1.0


def test_data_cli_subprocess(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "shared.data.build", "--out", str(tmp_path / "d"),
                        "--n-cases", "1", "--grid", "small"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d" / "manifest.jsonl").is_file()

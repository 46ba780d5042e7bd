"""guidegen-generate end to end on a tiny bundle (random stage-1 weights, the tiny trained LDM):
files and geometry, manifest, resume, batch independence, bad prompt files, a killed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from shared.labels import default_labels

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--stage1-steps", "2", "--stage2-steps", "2", "--precision", "fp32"]
PROMPTS = ["Portal venous phase. 4 cm mass in the sigmoid colon. The spleen is enlarged.",
           "Non-contrast CT. No colonic mass. Fatty liver.",
           "3 cm rectal mass. Status post right nephrectomy.",
           "Mass in the ascending colon, 45 mm. Distended bladder."]


def generate(bundle: Path, prompts: Path, out: Path, *extra: str) -> int:
    from pipelines import run

    return run.main(["--prompts", str(prompts), "--out", str(out), "--bundle", str(bundle), *FAST, *extra])


def test_bundle_checks_every_hash(tiny_bundle: Path) -> None:
    import yaml

    from pipelines.bundle import BundleError, load_bundle

    bundle = load_bundle(tiny_bundle)
    assert bundle.ct_grid == (32, 32, 16) and bundle.ct_spacing == (12.0, 12.0, 25.0)
    spec = yaml.safe_load(tiny_bundle.read_text())
    assert len(spec["files"]) == 10  # stage 1 + LDM, its text encoder, class map and VAE (yaml + weights)
    weights = tiny_bundle.parent / "stage1.safetensors"
    good = weights.read_bytes()
    try:
        weights.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
        with pytest.raises(BundleError, match="sha256 of stage1.safetensors"):
            load_bundle(tiny_bundle)
        weights.unlink()
        with pytest.raises(BundleError, match="stage1.safetensors is missing"):
            load_bundle(tiny_bundle)
    finally:
        weights.write_bytes(good)
    broken = tiny_bundle.with_name("broken.yaml")
    del spec["files"]["stage1.yaml"]
    broken.write_text(yaml.safe_dump(spec))
    with pytest.raises(BundleError, match="stage1.yaml is loaded but has no sha256"):
        load_bundle(broken)


def test_generate_writes_readable_aligned_cases(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    from shared.data.manifest import read_manifest

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n\n", encoding="utf-8")
    out = tmp_path / "out"
    assert generate(tiny_bundle, prompts, out, "--n-per-prompt", "2") == 0
    ids = ["p0001_00", "p0001_01", "p0002_00", "p0002_01"]
    rows = read_manifest(out / "manifest.jsonl")
    assert [r.case_id for r in rows] == ids  # prompt order
    table = default_labels()
    for r in rows:
        d = r.image.parent
        assert {p.name for p in d.iterdir()} == {"ct.nii.gz", "labels.nii.gz", "findings.json", "preview.png"}
        ct_s, lab_s = sitk.ReadImage(str(r.image)), sitk.ReadImage(str(r.label))
        assert ct_s.GetPixelID() == sitk.sitkInt16 and lab_s.GetPixelID() == sitk.sitkUInt8
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(ct_s, get)() == getattr(lab_s, get)(), get
        ct_n, lab_n = nib.load(str(r.image)), nib.load(str(r.label))
        np.testing.assert_allclose(ct_n.affine, lab_n.affine)
        np.testing.assert_allclose(np.abs(np.diag(ct_n.affine)[:3]), [12.0, 12.0, 25.0])
        ct, lab = np.asarray(ct_n.dataobj), np.asarray(lab_n.dataobj)
        assert ct.shape == lab.shape == (32, 32, 16)
        assert ct.min() >= -1000 and ct.max() <= 1000
        assert set(np.unique(lab)) <= set(range(table.num_classes))
        record = json.loads((d / "findings.json").read_text())
        assert record["asked"] == r.findings.to_dict() and set(record["agreement"]) >= {"tumor_sites", "phase"}
        assert record["settings"]["stage1"]["steps"] == 2 and record["settings"]["stage2"]["steps"] == 2
    first = json.loads((out / "cases/p0001_00/findings.json").read_text())
    assert first["asked"]["tumors"] == [{"site": "sigmoid", "size_mm": 40.0}]
    seeds = [json.loads((out / f"cases/{i}/findings.json").read_text())["seed"] for i in ids]
    assert len(set(seeds)) == 4
    assert "4 case(s) generated" in capsys.readouterr().out

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.jsonl"}
    assert generate(tiny_bundle, prompts, out, "--n-per-prompt", "2") == 0  # the same command again
    assert "0 case(s) generated, 4 already there" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_demo_prints_cases_and_writes_a_contact_sheet(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """make demo's script on the shipped example reports (six: sites, two tumours, none, an absent
    kidney, an enlarged spleen) with the tiny bundle."""
    from pipelines.demo import example_reports, main

    reports = [json.loads(line) for line in example_reports().read_text().splitlines()]
    assert len(reports) == 6
    assert main(["--out", str(tmp_path / "demo"), "--bundle", str(tiny_bundle), *FAST]) == 0
    out = capsys.readouterr().out
    for r in reports:
        assert f"{r['id']}: {r['report']}" in out
    assert "tumor: transverse colon 30 mm, rectum 25 mm." in out and "kidneys: left absent." in out
    sheet = tmp_path / "demo" / "contact_sheet.png"
    assert sheet.is_file() and sheet.stat().st_size > 50_000


def test_batch_of_one_and_of_four_give_the_same_cases(tiny_bundle: Path, tmp_path: Path) -> None:
    """fp32: a case's labels do not depend on the batch it ran in (one generator per case)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"c{i}", "report": p}) + "\n" for i, p in enumerate(PROMPTS)))
    assert generate(tiny_bundle, prompts, tmp_path / "b4", "--batch-size", "4", "--no-preview") == 0
    assert generate(tiny_bundle, prompts, tmp_path / "b1", "--batch-size", "1", "--no-preview") == 0
    for i in range(4):
        a = np.asarray(nib.load(str(tmp_path / f"b4/cases/c{i}/labels.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(tmp_path / f"b1/cases/c{i}/labels.nii.gz")).dataobj)
        assert np.array_equal(a, b), i
        ca = np.asarray(nib.load(str(tmp_path / f"b4/cases/c{i}/ct.nii.gz")).dataobj).astype(int)
        cb = np.asarray(nib.load(str(tmp_path / f"b1/cases/c{i}/ct.nii.gz")).dataobj).astype(int)
        assert np.abs(ca - cb).max() <= 1, i  # HU: float rounding at most


@pytest.mark.parametrize(("name", "content", "expect"), [
    ("empty.txt", b"", ["no prompts"]),
    ("garbage.txt", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", ["garbage.txt:1: not UTF-8"]),
    ("broken.jsonl", b'{"report": "4 cm sigmoid mass"}\n{"report": "rectal mass"\n{"id": "../x", "report": "no mass"}\n',
     [":2: not valid JSON", ":3: field 'id': '../x'"]),
    ("dup.csv", b"id,report\na,4 cm sigmoid mass\nb,\nA1,rectal mass\na,spleen enlarged\n",
     [":3: needs field 'report'", ":5: field 'id': case id 'a' already used on line 2"]),
], ids=["empty", "binary", "jsonl", "csv"])
def test_bad_prompt_files_write_nothing(tiny_bundle: Path, tmp_path: Path, capsys, name, content, expect) -> None:
    prompts = tmp_path / name
    prompts.write_bytes(content)
    out = tmp_path / "out"
    assert generate(tiny_bundle, prompts, out) == 2
    err = capsys.readouterr().err
    for text in expect:
        assert text in err, err
    assert "nothing was generated" in err and not out.exists()


DIE_IN_CASE_TWO = """
import contextlib, os, signal, sys
import shared.io.atomic as atomic
import shared.io.nifti as nifti
from pipelines import run

real, opened = atomic.atomic_path, []

@contextlib.contextmanager
def dying(path):
    with real(path) as tmp:
        opened.append(path)
        if len(opened) > 5 and str(path).endswith("ct.nii.gz"):  # case 1: 4 files + the manifest
            os.kill(os.getpid(), signal.SIGKILL)
        yield tmp

atomic.atomic_path = nifti.atomic_path = dying
sys.exit(run.main(sys.argv[1:]))
"""


def test_killed_run_resumes_to_complete_cases(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    """A process running guidegen-generate is SIGKILLed while case 2's CT is half written (its
    temporary file exists); the same command again ends with every case complete, no temporary
    file left and all cases in the manifest."""
    from pipelines import run

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    out = tmp_path / "out"
    args = ["--prompts", str(prompts), "--out", str(out), "--bundle", str(tiny_bundle), "--batch-size", "1", *FAST]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", DIE_IN_CASE_TWO, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "cases/p0001/findings.json").is_file() and not (out / "cases/p0002/findings.json").exists()
    assert list(out.rglob(".*.tmp*")), "the kill should leave a temporary file"
    assert run.main(args) == 0
    assert "2 case(s) generated, 1 already there" in capsys.readouterr().out
    assert not list(out.rglob(".*.tmp*"))
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in rows] == ["p0001", "p0002", "p0003"]
    for cid in ("p0001", "p0002", "p0003"):
        assert sitk.ReadImage(str(out / f"cases/{cid}/ct.nii.gz")).GetSize() == (32, 32, 16)


def test_stage1_sub_batches_change_no_output(tiny_bundle: Path) -> None:
    """GuideGenPipeline samples stage 1 in calls of at most `stage1_batch` masks: with one
    generator per case, 1 per call and 4 per call give the same labels (fp32)."""
    import torch

    from pipelines.pipeline import GuideGenPipeline

    pipe = GuideGenPipeline.from_bundle(tiny_bundle)
    labels = {}
    for n in (1, 4):
        pipe.stage1_batch = n
        gens = [torch.Generator().manual_seed(i) for i in range(3)]
        labels[n] = pipe.sample_masks(pipe.findings_of(PROMPTS[:3]), gens, steps=2, bf16=False)
    assert labels[1].shape == (3, 32, 32, 16) and torch.equal(labels[1], labels[4])
    with pytest.raises(ValueError, match="stage1_batch"):
        GuideGenPipeline(pipe.mask_sampler, pipe.slice_generator, pipe.labels, pipe.ct_grid, pipe.ct_affine,
                         stage1_batch=0)

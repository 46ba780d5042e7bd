"""Mask -> CT (guidegen-generate --masks) on the tiny bundle: an LPS input at 0.8 x 0.8 x 2.5 mm
keeps its geometry, laterality and labels; TotalSegmentator-named masks map by name; unknown ids
and bad files fail before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipelines.masks import resample
from shared.io.nifti import read_nifti, write_nifti
from shared.label_maps import LabelMapError, load_label_map, parse_label_map
from shared.labels import default_labels

FAST = ["--stage2-steps", "2", "--precision", "fp32"]
LPS_SPACING = (0.8, 0.8, 2.5)
LPS_SHAPE = (300, 300, 40)  # 240 x 240 x 100 mm


@pytest.fixture(scope="module")
def lps_mask(tiny_phantom: Path, tmp_path_factory) -> Path:
    """A phantom label volume resampled (nearest) onto an LPS grid at 0.8 x 0.8 x 2.5 mm around
    the upper abdomen (liver, spleen, kidneys)."""
    from shared.data.manifest import read_manifest

    entry = read_manifest(tiny_phantom)[0]
    labels, affine = read_nifti(entry.label)
    table = default_labels()
    centre = np.argwhere(np.isin(labels, [table.id_of("kidney_left"), table.id_of("kidney_right")])).mean(0)
    centre_mm = centre @ affine[:3, :3].T + affine[:3, 3]
    lps = np.diag([-LPS_SPACING[0], -LPS_SPACING[1], LPS_SPACING[2], 1.0])  # index axes point L, P, S
    half = 0.5 * (np.array(LPS_SHAPE) - 1) * np.array(LPS_SPACING) * np.array([-1, -1, 1])
    lps[:3, 3] = centre_mm - half
    out = resample(labels.astype(np.uint8), affine, LPS_SHAPE, lps, nearest=True, fill=0)
    path = tmp_path_factory.mktemp("masks") / "lps_case.nii.gz"
    write_nifti(path, out, lps)
    return path


def generate(bundle: Path, masks: Path, out: Path, *extra: str) -> int:
    from pipelines import run

    return run.main(["--masks", str(masks), "--out", str(out), "--bundle", str(bundle), *FAST, *extra])


def world_x(labels: np.ndarray, affine: np.ndarray, class_id: int) -> float:
    idx = np.argwhere(labels == class_id)
    return float((idx @ affine[:3, :3].T + affine[:3, 3])[:, 0].mean())


def test_lps_input_keeps_its_geometry_laterality_and_labels(tiny_bundle: Path, lps_mask: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert generate(tiny_bundle, lps_mask, out, "--report", "Non-contrast CT.") == 0
    src = nib.load(str(lps_mask))
    table = default_labels()
    for name in ("ct.nii.gz", "labels.nii.gz"):
        img = nib.load(str(out / "cases/lps_case" / name))
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-4)  # spacing, origin, direction
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    ct = np.asarray(nib.load(str(out / "cases/lps_case/ct.nii.gz")).dataobj)
    got = np.asarray(nib.load(str(out / "cases/lps_case/labels.nii.gz")).dataobj)
    want = np.asarray(src.dataobj)
    assert ct.dtype == np.int16 and ct.min() >= -1000 and ct.max() <= 1000
    # world coordinates (nibabel's RAS+): the liver on the patient's right of the spleen
    assert world_x(got, src.affine, table.id_of("liver")) > world_x(got, src.affine, table.id_of("spleen"))
    # every label keeps its voxels within one model-grid cell (12 x 12 x 25 mm = 15 x 15 x 10 voxels
    # here): no written voxel of a class lies further than that from the input's voxels of the class,
    # and the input's voxels of a class have written ones that near, but for parts thinner than a
    # cell, which the model grid cannot hold (the test phantom's 12 mm duodenum loses 16 %, the
    # small bowel 2 %, the other classes nothing)
    size = (31, 31, 21)
    for k in np.unique(want)[1:]:
        assert (got == k).any(), k
        assert not np.any((got == k) & ~ndimage.maximum_filter(want == k, size=size)), k
        lost = np.mean(~ndimage.maximum_filter(got == k, size=size)[want == k])
        assert lost < 0.2, (k, lost)
    record = json.loads((out / "cases/lps_case/findings.json").read_text())
    assert record["asked"]["phase"] == "non_contrast" and record["image"] == "cases/lps_case/ct.nii.gz"


def test_model_grid_output(tiny_bundle: Path, lps_mask: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert generate(tiny_bundle, lps_mask, out, "--output-grid", "model", "--no-preview") == 0
    img = nib.load(str(out / "cases/lps_case/labels.nii.gz"))
    assert img.shape == (32, 32, 16) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), [12.0, 12.0, 25.0])


def test_totalsegmentator_multilabel_maps_by_name(tiny_bundle: Path, lps_mask: Path, tmp_path: Path, capsys) -> None:
    """Our ids -> TotalSegmentator v2 ids (+ an aorta and a sacrum, which have no counterpart and
    become background); --label-map totalsegmentator_v2 maps them back by name."""
    labels, affine = read_nifti(lps_mask)
    table = default_labels()
    ts = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "stomach": 6, "pancreas": 7,
          "small_bowel": 18, "duodenum": 19, "colon": 20, "urinary_bladder": 21, "colorectal_tumor": 20}
    ts_labels = np.zeros(labels.shape, np.uint8)
    for name, ts_id in ts.items():
        ts_labels[labels == table.id_of(name)] = ts_id
    ts_labels[140:150, 200:210, 10:20] = 52  # aorta
    ts_labels[140:150, 220:230, 0:5] = 25  # sacrum
    masks = tmp_path / "ts"
    write_nifti(masks / "s0001.nii.gz", ts_labels, affine)
    out = tmp_path / "out"
    assert generate(tiny_bundle, masks, out, "--label-map", "totalsegmentator_v2", "--no-preview") == 0
    got = np.asarray(nib.load(str(out / "cases/s0001/labels.nii.gz")).dataobj)
    # the same mask in our own ids (tumour -> colon, aorta and sacrum -> background), default map
    ours = np.where(labels == table.id_of("colorectal_tumor"), table.id_of("colon"), labels).astype(np.uint8)
    ours[140:150, 200:210, 10:20] = 0
    ours[140:150, 220:230, 0:5] = 0
    write_nifti(tmp_path / "ours" / "s0001.nii.gz", ours, affine)
    assert generate(tiny_bundle, tmp_path / "ours", tmp_path / "out_ours", "--no-preview") == 0
    want = np.asarray(nib.load(str(tmp_path / "out_ours/cases/s0001/labels.nii.gz")).dataobj)
    assert np.array_equal(got, want) and (got == table.id_of("liver")).sum() > 1000

    ts_labels[0, 0, 0] = 200  # not a TotalSegmentator v2 id
    write_nifti(masks / "s0002.nii.gz", ts_labels, affine)
    capsys.readouterr()
    assert generate(tiny_bundle, masks, tmp_path / "out2", "--label-map", "totalsegmentator_v2") == 2
    err = capsys.readouterr().err
    assert "s0002.nii.gz" in err and "[200]" in err and not (tmp_path / "out2").exists()


def test_default_map_refuses_ids_outside_the_table(tiny_bundle: Path, lps_mask: Path, tmp_path: Path, capsys) -> None:
    labels, affine = read_nifti(lps_mask)
    labels[0, 0, 0] = 12
    bad = tmp_path / "m" / "bad id!.nii.gz"
    write_nifti(bad, labels, affine)
    (tmp_path / "m" / "broken.nii.gz").write_bytes(b"not a nifti")
    assert generate(tiny_bundle, tmp_path / "m", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "bad id!" in err and "broken.nii.gz" in err and not (tmp_path / "out").exists()


def test_label_map_files_are_checked(tmp_path: Path) -> None:
    ts = load_label_map("totalsegmentator_v2")
    table = default_labels()
    assert ts.target_ids[5] == table.id_of("liver") and ts.target_ids[52] == 0 and ts.id_of_name("colon") == 9
    assert len(ts.source) == 118
    with pytest.raises(LabelMapError, match="'source'"):
        parse_label_map({"map": {}}, "x.yaml")
    with pytest.raises(LabelMapError, match="'hepar' is not a class"):
        parse_label_map({"source": {0: "background", 1: "liver"}, "map": {"hepar": "liver"}}, "x.yaml")
    with pytest.raises(LabelMapError, match="x.yaml: .*'lever'"):
        parse_label_map({"source": {0: "background", 1: "liver"}, "map": {"liver": "lever"}}, "x.yaml")
    own = parse_label_map({"source": {0: "background", 7: "liver", 9: "gallbladder"}}, "own.yaml")
    assert own.target_ids == {0: 0, 7: table.id_of("liver"), 9: 0}  # same names map, the rest to background
    with pytest.raises(LabelMapError, match="no label map 'nope'"):
        load_label_map("nope")

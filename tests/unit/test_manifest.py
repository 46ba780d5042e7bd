import json

import numpy as np
import pytest

from shared.data.manifest import ManifestError, read_manifest, validate_manifest, write_manifest
from shared.findings import Findings
from shared.io.nifti import write_case, write_nifti

AFF = np.diag([3.0, 3.0, 5.0, 1.0])


def _record(cid, split="train", **kw):
    rec = {"case_id": cid, "image": f"img/{cid}.nii.gz", "label": f"lab/{cid}.nii.gz",
           "report": "No colonic mass.", "split": split, "findings": Findings().to_dict()}
    rec.update(kw)
    return rec


def _write(root, records):
    path = root / "manifest.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def _case(root, cid, labels=None, label_affine=AFF, label_shape=(6, 6, 4)):
    lab = np.zeros(label_shape, np.uint8) if labels is None else labels
    write_nifti(root / f"lab/{cid}.nii.gz", lab, label_affine)
    write_nifti(root / f"img/{cid}.nii.gz", np.zeros((6, 6, 4), np.int16), AFF)


def test_good_manifest_round_trips(tmp_path):
    _case(tmp_path, "a")
    path = _write(tmp_path, [_record("a"), _record("b_2", split="test")])
    entries = read_manifest(path)
    assert [e.case_id for e in entries] == ["a", "b_2"]
    assert entries[0].image == (tmp_path / "img/a.nii.gz").resolve()
    assert read_manifest(path, split="test")[0].case_id == "b_2"
    out = tmp_path / "copy.jsonl"
    write_manifest(out, entries)
    assert read_manifest(out) == entries
    assert json.loads(out.read_text().splitlines()[0])["image"] == "img/a.nii.gz"


def test_file_problems_name_case_and_field(tmp_path):
    _case(tmp_path, "ok")
    bad_values = np.zeros((6, 6, 4), np.uint8)
    bad_values[0, 0, 0] = 42
    _case(tmp_path, "badlabel", labels=bad_values)
    _case(tmp_path, "badgeom", label_affine=np.diag([3.0, 3.0, 4.0, 1.0]))
    _case(tmp_path, "badshape", label_shape=(6, 6, 5))
    path = _write(tmp_path, [_record(c) for c in ("ok", "missing", "badlabel", "badgeom", "badshape")])
    with pytest.raises(ManifestError) as e:
        validate_manifest(path)
    problems = e.value.problems
    assert len(problems) == 5
    assert "manifest.jsonl:2 (case 'missing'): field 'image'" in problems[0]
    assert "manifest.jsonl:2 (case 'missing'): field 'label'" in problems[1]
    assert "not found" in problems[0]
    assert ":3 (case 'badlabel'): field 'label': values [42]" in problems[2]
    assert ":4 (case 'badgeom'): field 'label': geometry" in problems[3]
    assert ":5 (case 'badshape'): field 'label': shape" in problems[4]


@pytest.mark.parametrize(
    "line, match",
    [("{not json", r":1: not valid JSON"),
     (json.dumps({"case_id": "a"}), r":1 \(case 'a'\): missing field 'image'"),
     (json.dumps(_record("a", split="training")), r"field 'split'"),
     (json.dumps(_record("../etc")), r"field 'case_id'"),
     (json.dumps(_record("a", findings={"spleen": "huge"})), r"field 'findings': spleen"),
     ("[1, 2]", r":1: expected a JSON object")],
)
def test_text_problems_name_line_and_field(tmp_path, line, match):
    path = _write(tmp_path, [line])
    with pytest.raises(ManifestError, match=match):
        read_manifest(path)


def test_all_problems_reported_at_once(tmp_path):
    path = _write(tmp_path, [_record("a"), "{", _record("a"), _record("c", split="x")])
    with pytest.raises(ManifestError) as e:
        read_manifest(path)
    text = str(e.value)
    assert "3 problem(s)" in text and ":2:" in text and "repeats line 1" in text and ":4 " in text


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_interrupted_manifest_write_leaves_old(tmp_path, monkeypatch):
    _case(tmp_path, "a")
    path = _write(tmp_path, [_record("a")])
    before = path.read_text()
    entries = read_manifest(path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("shared.data.manifest.json.dumps", boom)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(path, entries * 2)
    assert path.read_text() == before


def test_write_case_shapes_must_match(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_case(tmp_path / "c.nii.gz", tmp_path / "l.nii.gz", np.zeros((2, 2, 2)),
                   np.zeros((2, 2, 3), np.uint8), AFF)

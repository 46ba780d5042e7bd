"""The shipped bundle end to end at a few steps: laterality in world coordinates, read back with
nibabel (an independent reader): the liver lies on the patient's right of the spleen."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared.labels import default_labels


@pytest.mark.slow
def test_shipped_bundle_puts_the_liver_on_the_patients_right(tmp_path: Path) -> None:
    from pipelines import run

    prompts = tmp_path / "p.txt"
    prompts.write_text("Portal venous phase. 4 cm mass in the sigmoid colon.\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run.main(["--prompts", str(prompts), "--out", str(out), "--stage1-steps", "10",
                     "--stage2-steps", "2", "--no-preview"]) == 0
    img = nib.load(str(out / "cases/p0001/labels.nii.gz"))
    labels, affine = np.asarray(img.dataobj), img.affine
    table = default_labels()

    def centroid_x(name: str) -> float:
        idx = np.argwhere(labels == table.id_of(name))
        assert len(idx) > 100, name
        return float((idx @ affine[:3, :3].T + affine[:3, 3])[:, 0].mean())

    # NIfTI world is RAS+: x grows toward the patient's right
    assert centroid_x("liver") > centroid_x("spleen") + 50.0
    assert centroid_x("kidney_right") > centroid_x("kidney_left")

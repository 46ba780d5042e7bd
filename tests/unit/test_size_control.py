"""Tumour size control (stage1_mask.size): target volumes from the text, per-sample logit shift."""

from __future__ import annotations

import math

import pytest
import torch

from stage1_mask.size import match_class_volume, target_tumor_voxels


def test_target_voxels_from_text_closed_form() -> None:
    texts = ["tumor: sigmoid colon 40 mm. spleen: normal.",
             "tumor: rectum 20 mm, right colon 30 mm. spleen: normal.",
             "tumor: none. spleen: enlarged."]
    n = target_tumor_voxels(texts, [6.0, 6.0, 10.0])
    assert n.dtype == torch.float64 and n.shape == (3, 2)  # per tumour, largest first, NaN-padded
    assert math.isclose(float(n[0, 0]), math.pi / 6 * 40**3 / 360.0, rel_tol=1e-12) and math.isnan(float(n[0, 1]))
    assert math.isclose(float(n[1, 0]), math.pi / 6 * 30**3 / 360.0, rel_tol=1e-12)
    assert math.isclose(float(n[1].sum()), math.pi / 6 * (20**3 + 30**3) / 360.0, rel_tol=1e-12)
    assert bool(n[2].isnan().all())


@pytest.mark.parametrize("mode", ["expected", "argmax"])
def test_match_class_volume_hits_the_target_and_keeps_the_ranking(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 8, 8, 4, generator=gen, dtype=torch.float64) * 3  # (B, K, *S)
    target = torch.tensor([10.0, 100.0, float("nan")], dtype=torch.float64)
    out = match_class_volume(logits, 4, target, mode=mode)
    assert out.shape == logits.shape and out.dtype == logits.dtype  # float64 stays float64
    torch.testing.assert_close(out[:, :4], logits[:, :4])  # other classes untouched
    torch.testing.assert_close(out[2], logits[2])  # NaN target: sample left alone
    shift = (out[:, 4] - logits[:, 4]).flatten(1)
    assert torch.allclose(shift, shift[:, :1])  # one scalar per sample: the voxel ranking stays
    if mode == "expected":
        counts = torch.softmax(out, 1)[:, 4].flatten(1).sum(1)
        torch.testing.assert_close(counts[:2], target[:2], rtol=1e-4, atol=1e-3)
    else:
        counts = (out.argmax(1) == 4).flatten(1).sum(1)
        assert counts[:2].tolist() == [10, 100]


def test_per_tumour_mode_keeps_two_separate_tumours() -> None:
    """Two blobs of tumour evidence, one much stronger: a global count gives all the volume to
    the strong one; "per_tumour" gives each blob its own reported size."""
    logits = torch.zeros(1, 3, 20, 20, 10, dtype=torch.float64)
    logits[0, 2] = -4.0
    logits[0, 2, 2:6, 2:6, 2:6] = 3.0   # strong blob (64 voxels)
    logits[0, 2, 14:18, 14:18, 4:8] = 1.0  # weak blob (64 voxels), far away
    logits[0, 2] += 0.01 * torch.rand(20, 20, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sizes = torch.tensor([[40.0, 20.0]], dtype=torch.float64)
    glob = match_class_volume(logits, 2, sizes, mode="argmax").argmax(1)[0] == 2
    per = match_class_volume(logits, 2, sizes, mode="per_tumour").argmax(1)[0] == 2
    assert int(glob.sum()) == 60 and int(glob[14:18, 14:18, 4:8].sum()) == 0
    assert int(per[2:6, 2:6, 2:6].sum()) == 40 and int(per[14:18, 14:18, 4:8].sum()) == 20
    assert int(per.sum()) == 60


def test_match_class_volume_rejects_a_wrong_target_shape() -> None:
    with pytest.raises(ValueError, match="target"):
        match_class_volume(torch.zeros(2, 3, 4, 4), 2, torch.ones(3))
    with pytest.raises(ValueError, match="mode"):
        match_class_volume(torch.zeros(2, 3, 4, 4), 2, torch.ones(2), mode="median")

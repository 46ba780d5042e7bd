import numpy as np
import torch

from shared.data.downsample import downsample_labels, label_fractions, upsample_probs


def _ball(shape, spacing, center_mm, diameter_mm):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, center_mm, strict=True))
    return r2 <= (diameter_mm / 2) ** 2


def test_fractions_sum_to_one_and_preserve_volume():
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 5, (16, 12, 8), generator=g)
    frac = label_fractions(lab, (8, 6, 4), 5)
    assert frac.shape == (5, 8, 6, 4)
    torch.testing.assert_close(frac.sum(0), torch.ones(8, 6, 4))
    counts = torch.bincount(lab.flatten(), minlength=5).float()
    torch.testing.assert_close(frac.sum((1, 2, 3)) * 8, counts)


def test_20mm_tumour_survives_at_stage1_grid():
    # default phantom grid 128x128x80 @ 3x3x5 mm -> stage-1 grid 64x64x40 (6x6x10 mm cells)
    shape, spacing = (128, 128, 80), (3.0, 3.0, 5.0)
    lab = np.zeros(shape, np.int64)
    lab[40:90, 40:90, 20:60] = 9  # colon-ish block
    # 20 mm tumour placed off the coarse-cell grid to be unfavourable
    tumour = _ball(shape, spacing, (200.0 + 4.5, 190.0 + 1.5, 197.5 + 2.5), 20.0)
    lab[tumour] = 11
    low = downsample_labels(lab, (64, 64, 40), 12, priority_ids=[11])
    n_low = int((low == 11).sum())
    assert n_low > 0
    vol_fine = tumour.sum() * 3 * 3 * 5
    vol_low = n_low * 6 * 6 * 10
    assert 0.5 * vol_fine <= vol_low <= 2.0 * vol_fine
    # the other labels are kept too
    assert int((low == 9).sum()) > 0 and set(low.unique().tolist()) == {0, 9, 11}


def test_priority_beats_plain_majority():
    lab = torch.zeros(8, 8, 8, dtype=torch.long)
    lab[0:1, 0:2, 0:2] = 11  # 4 of 8 voxels of coarse cell (0, 0, 0) -> 50 % tumour
    lab[1:2, 0:2, 0:2] = 9
    plain = downsample_labels(lab, (4, 4, 4), 12)
    prio = downsample_labels(lab, (4, 4, 4), 12, priority_ids=[11], priority_threshold=0.25)
    lab2 = lab.clone()
    lab2[0:1, 0:1, 0:2] = 9  # only 2 / 8 = 25 % tumour now: colon wins without priority
    assert downsample_labels(lab2, (4, 4, 4), 12)[0, 0, 0] == 9
    assert downsample_labels(lab2, (4, 4, 4), 12, priority_ids=[11])[0, 0, 0] == 11
    assert prio[0, 0, 0] == 11 and plain.shape == prio.shape


def test_batched_and_2d():
    lab = torch.randint(0, 3, (2, 8, 8))
    out = downsample_labels(lab, (4, 4), 3)
    assert out.shape == (2, 4, 4)
    assert torch.equal(out[1], downsample_labels(lab[1], (4, 4), 3))


def test_upsample_probs_round_trip_of_blocks():
    lab = torch.zeros(1, 4, 4, 2, dtype=torch.long)
    lab[0, :2] = 1
    probs = torch.nn.functional.one_hot(lab, 2).movedim(-1, 1).float()
    up = upsample_probs(probs, (8, 8, 4))
    assert up.shape == (1, 2, 8, 8, 4)
    labels = up.argmax(1)
    assert (labels[0, :3] == 1).all() and (labels[0, 5:] == 0).all()


def test_block_counting_equals_area_interpolation():
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 6, (2, 12, 8, 6), generator=g)
    fast = label_fractions(lab, (6, 4, 3), 6)
    onehot = torch.nn.functional.one_hot(lab, 6).movedim(-1, 1).float()
    ref = torch.nn.functional.interpolate(onehot, size=(6, 4, 3), mode="area")
    torch.testing.assert_close(fast, ref)
    odd = label_fractions(lab[0], (5, 3, 4), 6)  # non-integer factors take the other path
    torch.testing.assert_close(odd.sum(0), torch.ones(5, 3, 4))

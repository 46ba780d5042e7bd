"""Organ level harmonisation along z (stage2_ct.harmonize), against closed forms in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.labels import default_labels
from stage2_ct.harmonize import (
    SOLID_ORGANS,
    harmonize_levels,
    organ_ids,
    organ_slice_means,
    smooth_weighted,
)


@settings(max_examples=25, deadline=None)
@given(z=st.integers(1, 12), sigma=st.floats(0.3, 8.0), seed=st.integers(0, 2**16))
def test_smooth_weighted_is_the_weighted_gaussian_average(z: int, sigma: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    v, w = rng.normal(size=(2, z)), rng.integers(0, 4, size=(2, z)).astype(float)
    w[:, 0] += 1  # every row has weight
    got = smooth_weighted(torch.from_numpy(v), torch.from_numpy(w), sigma).numpy()
    k = np.arange(z)
    g = np.exp(-0.5 * ((k[:, None] - k[None, :]) / sigma) ** 2)  # (Z, Z), within 3 sigma it is the same
    g[np.abs(k[:, None] - k[None, :]) > math.ceil(3 * sigma)] = 0.0
    want = (g @ (w * v).T).T / (g @ w.T).T
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    mean = smooth_weighted(torch.from_numpy(v), torch.from_numpy(w), math.inf).numpy()
    np.testing.assert_allclose(mean, np.repeat((w * v).sum(1, keepdims=True) / w.sum(1, keepdims=True), z, 1))


def _organ_volume(offsets: np.ndarray, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 24, 24, Z) HU: a 12 x 12 organ (label 4, 60 HU + per-slice offsets + noise) in fat
    (-100 HU, label 0) with a second organ (label 1) beside it at 40 HU."""
    rng = np.random.default_rng(seed)
    z = len(offsets)
    lab = np.zeros((24, 24, z), np.int64)
    lab[4:16, 4:16] = 4
    lab[18:22, 4:16] = 1
    hu = np.where(lab == 4, 60.0 + offsets[None, None, :], np.where(lab == 1, 40.0, -100.0))
    hu = hu + rng.normal(0, 10, hu.shape)
    return torch.from_numpy(hu)[None], torch.from_numpy(lab)[None]


def test_one_level_per_organ_removes_slice_offsets_and_keeps_the_rest() -> None:
    offsets = np.random.default_rng(1).normal(0, 8, 10)
    hu, lab = _organ_volume(offsets)
    out = harmonize_levels(hu, lab, [4], sigma=math.inf, prior_voxels=0)
    means, n = organ_slice_means(out, lab == 4)
    before, _ = organ_slice_means(hu, lab == 4)
    assert float(before.std()) > 5  # the offsets are there ...
    torch.testing.assert_close(means, means[:, :1].expand_as(means), atol=1e-9, rtol=0)  # ... and gone
    assert float(means.mean()) == pytest.approx(float((before * n).sum() / n.sum()), abs=1e-9)  # level kept
    assert torch.equal(out[lab != 4], hu[lab != 4])  # other labels and the background untouched
    inner = organ_slice_means(out - hu, lab == 4)[0]  # one offset per slice: texture and noise kept
    torch.testing.assert_close((out - hu)[0, 5:15, 5:15], inner[0].expand(10, 10, -1), atol=1e-9, rtol=0)


def test_steady_organs_are_barely_touched() -> None:
    hu, lab = _organ_volume(np.zeros(16), seed=2)
    out = harmonize_levels(hu, lab, [1, 4], sigma=3.0)
    change = (out - hu)[np.isin(lab.numpy(), [1, 4])]
    assert float(change.abs().max()) < 3.0  # noise of a 100-voxel mean (~1 HU), not levels
    assert float(change.abs().max()) > 0.0


def test_slow_trend_is_kept_and_fast_jitter_removed() -> None:
    z = np.arange(30)
    trend, jitter = 1.0 * z, np.where(z % 2 == 0, 6.0, -6.0)
    hu, lab = _organ_volume(trend + jitter, seed=3)
    out = harmonize_levels(hu, lab, [4], sigma=2.0, prior_voxels=0)
    means = organ_slice_means(out, lab == 4)[0][0].numpy()
    inner = slice(6, 24)  # away from the ends, where the window is cut
    resid = means[inner] - 60.0 - trend[inner]
    assert np.abs(resid).max() < 2.0  # the trend survives, the +-6 HU alternation does not
    assert np.abs(np.diff(means)).mean() < 0.3 * np.abs(np.diff(organ_slice_means(hu, lab == 4)[0][0].numpy())).mean()


def test_small_slices_are_shrunk_towards_their_own_mean() -> None:
    hu, lab = _organ_volume(np.zeros(6), seed=4)
    lab[0, ..., 0] = 0
    lab[0, 8:11, 8:11, 0] = 4  # 9 voxels, 1 interior voxel: a noisy slice
    hu[0, 8:11, 8:11, 0] += 30.0
    full = harmonize_levels(hu, lab, [4], sigma=math.inf, prior_voxels=0, erode=1)
    shrunk = harmonize_levels(hu, lab, [4], sigma=math.inf, prior_voxels=16, erode=1)
    d_full, d_shrunk = (float((x - hu)[0, 9, 9, 0]) for x in (full, shrunk))
    assert d_full < -20 and d_shrunk == pytest.approx(d_full / 17, rel=1e-6)


def test_bad_arguments_are_named() -> None:
    hu, lab = _organ_volume(np.zeros(4))
    with pytest.raises(ValueError, match="sigma"):
        harmonize_levels(hu, lab, [4], sigma=0.0)
    with pytest.raises(ValueError, match="prior_voxels"):
        harmonize_levels(hu, lab, [4], prior_voxels=-1)
    with pytest.raises(ValueError, match=r"\(B, X, Y, Z\)"):
        harmonize_levels(hu[0], lab[0], [4])


def test_organ_ids_are_the_default_tables() -> None:
    table = default_labels()
    assert organ_ids(table.num_classes) == [table.id_of(n) for n in SOLID_ORGANS]
    with pytest.raises(ValueError, match="level_sigma=0"):
        organ_ids(table.num_classes + 1)

"""stage2_ct.evaluate.volume_stats: continuity, adjacent-slice noise correlation, liver std."""

from __future__ import annotations

import numpy as np

from shared.labels import default_labels
from stage2_ct.evaluate import volume_stats


def _case(noise_z: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 24^2 x 12 body at 60 HU with a liver block; noise either fresh per slice or shared."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((24, 24, 12), np.int64)
    labels[4:20, 4:20, 2:10] = default_labels().id_of("liver")
    if noise_z == "fresh":
        noise = rng.normal(0, 10, (24, 24, 12))
    else:  # the same in-plane noise on every slice
        noise = np.repeat(rng.normal(0, 10, (24, 24, 1)), 12, axis=-1)
    return (60.0 + noise).astype(np.float32)[None], labels[None]


def test_shared_noise_is_continuous_and_correlated_fresh_noise_is_not() -> None:
    fresh, labels = _case("fresh")
    shared, _ = _case("shared")
    st = volume_stats({"fresh": fresh, "shared": shared}, labels)
    s_fresh, s_shared = st["fresh"], st["shared"]
    assert s_shared["z_gradient"] < 1e-4 < s_fresh["z_gradient"]
    # |N(0, 10) - N(0, 10)| has mean 20 / sqrt(pi) ~ 11.3 HU
    assert abs(s_fresh["z_gradient"] - 20 / np.sqrt(np.pi)) < 1.0
    assert s_shared["noise_corr"] > 0.99
    assert abs(s_fresh["noise_corr"]) < 0.15
    # liver std of N(0, 10) noise on the eroded liver
    assert 8.5 < s_fresh["liver_std"] < 11.5

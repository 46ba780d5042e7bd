"""Per-volume class levels (stage2_ct.levels) and the class map that paints them."""

from __future__ import annotations

import math

import pytest
import torch

from shared.findings import Findings
from stage2_ct.conditioning import ClassTextEmbedding
from stage2_ct.levels import CLIP, LevelBank, level_key, organ_levels

PV = Findings(phase="portal_venous").summary()
NC = Findings(phase="non_contrast").summary()
NC_FATTY = Findings(phase="non_contrast", liver="fatty").summary()


def test_level_key_reads_phase_and_liver() -> None:
    assert level_key(PV) == "portal_venous/normal"
    assert level_key(NC_FATTY) == "non_contrast/fatty"
    assert level_key("CT in the portal venous phase. Hepatic steatosis.") == "portal_venous/fatty"


def test_organ_levels_use_the_eroded_mask() -> None:
    """The rim of an organ (partial volume in real CT) does not count; too small classes are NaN."""
    labels = torch.zeros(1, 20, 20, 10, dtype=torch.long)
    hu = torch.full((1, 20, 20, 10), -100.0)
    labels[0, 2:10, 2:10, 1:9] = 1
    hu[0, 2:10, 2:10, 1:9] = 500.0  # rim value
    hu[0, 4:8, 4:8, 2:8] = 50.0  # what survives 3x3x3 then 3x3x1 erosion (4 x 4 x 6 = 96 voxels)
    labels[0, 0, 0, 0] = 2  # one voxel: no level
    lv = organ_levels(hu, labels, 4)
    assert lv.shape == (1, 4)
    assert float(lv[0, 1]) == pytest.approx(50.0)
    assert math.isnan(float(lv[0, 2])) and math.isnan(float(lv[0, 3]))
    assert float(lv[0, 0]) == pytest.approx(-100.0)  # background: the eroded part never touches the rim


def test_level_bank_standardises_by_group_and_draws_from_it() -> None:
    g = torch.Generator().manual_seed(0)
    n = 40
    summaries = [PV if i % 2 else NC for i in range(n)]
    levels = torch.stack([torch.tensor([0.0, 170.0 if s == PV else 33.0, float("nan")]) for s in summaries])
    levels[:, 1] += torch.randn(n, generator=g) * torch.tensor([5.0 if s == PV else 0.2 for s in summaries])
    bank = LevelBank.fit(levels, summaries)
    assert set(bank.groups) == {"portal_venous/normal", "non_contrast/normal"}
    delta = bank.standardize(levels, summaries)
    for s in (PV, NC):
        rows = delta[[i for i, t in enumerate(summaries) if t == s]]
        if s == PV:  # std above the 1 HU floor: standardised to mean 0, std 1
            assert float(rows[:, 1].mean()) == pytest.approx(0.0, abs=1e-5)
            assert float(rows[:, 1].std()) == pytest.approx(1.0, abs=1e-5)
        else:  # std 0.2 HU < floor: deltas stay small
            assert float(rows[:, 1].abs().max()) < 1.0
    assert torch.all(delta[:, 2] == 0) and torch.all(delta[:, 0] == 0)  # absent / constant classes
    assert float(delta.abs().max()) <= CLIP

    bank = LevelBank.from_dict(bank.to_dict())  # the artifact's round trip (rounded to 1e-3)
    drawn = bank.draw([PV, NC, "phase: arterial. liver: normal."], torch.Generator().manual_seed(1))
    pv_rows = torch.tensor(bank.groups["portal_venous/normal"]["rows"])
    nc_rows = torch.tensor(bank.groups["non_contrast/normal"]["rows"])
    assert (pv_rows == drawn[0]).all(1).any() and (nc_rows == drawn[1]).all(1).any()
    assert torch.equal(drawn[2], torch.zeros(3))  # unknown wording -> phase unknown: no group
    again = bank.draw([PV, NC, "x"], torch.Generator().manual_seed(1))
    assert torch.equal(drawn[:2], again[:2])
    many = bank.draw([PV] * 64, torch.Generator().manual_seed(2))
    assert len({tuple(r.tolist()) for r in many}) > 10  # rows vary from volume to volume
    assert torch.equal(bank.draw([PV, NC], mode="mean"), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="level mode"):
        bank.draw([PV], mode="median")


def test_class_map_paints_levels_from_a_zero_start() -> None:
    torch.manual_seed(0)
    plain = ClassTextEmbedding(8, 3, 4)
    with_levels = ClassTextEmbedding(8, 3, 4, levels=True)
    with_levels.load_state_dict({**plain.state_dict(), "level_dirs": torch.zeros(3, 4)})
    pooled, seg = torch.randn(2, 8), torch.rand(2, 3, 5, 5)
    levels = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.0, 0.0]])
    assert torch.equal(with_levels(pooled, seg, levels), plain(pooled, seg))  # zero init: unchanged
    with torch.no_grad():
        with_levels.level_dirs.fill_(0.5)
    out = with_levels(pooled, seg, levels)
    want = plain(pooled, seg) + 0.5 * torch.einsum("bkhw,bk->bhw", seg, levels)[:, None]
    assert torch.allclose(out, want, atol=1e-6)
    with pytest.raises(ValueError, match="levels"):
        with_levels(pooled, seg)

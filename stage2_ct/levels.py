"""Per-volume organ levels: one HU level per class and volume, given to every slice of it.

Generated slice after slice, an organ's level wanders along z (each slice copies its noisy
predecessor), and that wander, not a bias, made the case-to-case spread of kidney levels 3x the
teacher-forced one (docs/stage2.md). So the level of each class is decided once per volume and
painted onto that class's pixels in every slice (conditioning.ClassTextEmbedding): a hierarchical
sample, volume attributes first, then the slices.

A class's level in a volume is its mean HU on the eroded mask (3 x 3 x 3 erosion, then once more
in-plane). It enters the network standardised within its report group (`level_key`: contrast
phase and liver state, the findings that move organ HU): delta = (level - mean) / std of the
training volumes of that group, clipped to +-4; 0 = a typical volume (absent class, unknown group,
or level dropout in training). At inference `LevelBank.draw` resamples the delta row of a random
training volume of the same group, so generated volumes vary as much as the training ones do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from shared.text.lexicon import abstract_report

log = logging.getLogger(__name__)

MIN_VOXELS = 20  # a class with fewer eroded voxels has no level in that volume
MIN_STD_HU = 1.0  # floor of a group's std (a class whose level hardly varies)
CLIP = 4.0


def level_key(summary: str) -> str:
    """Report group of a summary / report: 'phase/liver', e.g. 'portal_venous/fatty'."""
    f = abstract_report(summary)
    return f"{f.phase}/{f.liver}"


def _pool_max(x: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    return F.max_pool3d(x, kernel, stride=1, padding=tuple(k // 2 for k in kernel))


@torch.no_grad()
def organ_levels(hu: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean HU of every class on its eroded mask, per volume.

    hu, labels: (N, X, Y, Z) HU and class ids. A voxel is in its class's eroded mask when its
    3 x 3 x 3 neighbourhood holds one class only (min = max label; outside the volume counts as
    inside), and so is every voxel of its 3 x 3 in-plane neighbourhood. Returns float32 (N, K);
    NaN where a class has fewer than MIN_VOXELS eroded voxels in a volume.
    """
    out = torch.full((len(hu), num_classes), float("nan"))
    for i in range(len(hu)):
        lab = labels[i].float()[None, None]  # (1, 1, X, Y, Z)
        uniform = (_pool_max(lab, (3, 3, 3)) == -_pool_max(-lab, (3, 3, 3))).float()
        inner = (-_pool_max(-uniform, (3, 3, 1)))[0, 0].bool()  # (X, Y, Z)
        ids = labels[i][inner].long()
        count = torch.bincount(ids, minlength=num_classes).double()
        total = torch.bincount(ids, weights=hu[i][inner].double(), minlength=num_classes)
        out[i] = torch.where(count >= MIN_VOXELS, total / count.clamp_min(1), float("nan")).float()
    return out


class LevelBank:
    """Standardised level rows of the training volumes, by report group.

    groups: {key: {"mean": [K] HU, "std": [K] HU, "rows": [[K] delta, ...]}}.
    """

    def __init__(self, groups: dict[str, dict[str, Any]]) -> None:
        self.groups = groups

    @classmethod
    def fit(cls, levels: torch.Tensor, summaries: Sequence[str]) -> LevelBank:
        """From training levels (N, K) HU (NaN = absent) and their summaries."""
        keys = [level_key(s) for s in summaries]
        groups: dict[str, dict[str, Any]] = {}
        for key in sorted(set(keys)):
            lv = levels[[i for i, k in enumerate(keys) if k == key]].double()  # (n, K)
            present = ~lv.isnan()
            n = present.sum(0).clamp_min(1)
            mean = torch.where(present, lv, 0).sum(0) / n  # 0 for a class absent from the group
            var = torch.where(present, (lv - mean) ** 2, 0).sum(0) / (n - 1).clamp_min(1)
            std = var.sqrt().clamp_min(MIN_STD_HU)
            groups[key] = {"mean": mean.tolist(), "std": std.tolist()}
            groups[key]["rows"] = _delta(lv, mean, std).tolist()
        log.info("level bank: %s", {k: len(g["rows"]) for k, g in groups.items()})
        return cls(groups)

    def standardize(self, levels: torch.Tensor, summaries: Sequence[str]) -> torch.Tensor:
        """Levels (N, K) HU -> delta (N, K) float32 (0 where absent or the group is unknown)."""
        out = torch.zeros(levels.shape, dtype=torch.float32)
        for i, s in enumerate(summaries):
            g = self.groups.get(level_key(s))
            if g is not None:
                out[i] = _delta(levels[i].double(), torch.tensor(g["mean"]), torch.tensor(g["std"])).float()
        return out

    def draw(self, summaries: Sequence[str], generator: torch.Generator | None = None,
             mode: str = "bank") -> torch.Tensor:
        """Delta rows (B, K) for new volumes: a random training row of each summary's group
        ("bank"), or zeros, every class at its group's mean level ("mean")."""
        if mode not in ("bank", "mean"):
            raise ValueError(f"level mode {mode!r} must be 'bank' or 'mean'")
        k = len(next(iter(self.groups.values()))["mean"]) if self.groups else 0
        out = torch.zeros(len(summaries), k)
        for i, s in enumerate(summaries):
            g = self.groups.get(level_key(s))
            if g is None:
                log.warning("no training volume in report group %r: typical levels", level_key(s))
            elif mode == "bank":
                j = int(torch.randint(len(g["rows"]), (1,), generator=generator,
                                      device=generator.device if generator is not None else None))
                out[i] = torch.tensor(g["rows"][j])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain lists rounded for the artifact's metadata."""
        return {key: {name: _round(v) for name, v in g.items()} for key, g in self.groups.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LevelBank:
        return cls({str(k): dict(v) for k, v in data.items()})


def _delta(levels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    d = ((levels - mean) / std).clamp(-CLIP, CLIP)
    return torch.nan_to_num(d, nan=0.0)


def _round(v: list) -> list:
    if v and isinstance(v[0], list):
        return [_round(r) for r in v]
    return [round(float(x), 3) for x in v]

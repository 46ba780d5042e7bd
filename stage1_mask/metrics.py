"""Stage-1 mask metrics: Dice per class, text alignment (findings_from_volume), organ presence,
tumour volume and colon connectivity. Plain numpy/torch, shared by validation and evaluate.py."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from shared.findings import Findings
from shared.labels import LabelTable
from shared.text.volume import findings_from_volume

# Fields a label volume alone can answer (phase and fatty liver need the CT).
LABEL_FIELDS: tuple[str, ...] = ("tumor_sites", "tumor_presence", "spleen", "kidney_left",
                                 "kidney_right", "bladder")


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice (K,) of label volumes pred, target (B, *S); NaN where a class is in neither."""
    p = torch.nn.functional.one_hot(pred.long(), num_classes).flatten(0, -2).float()  # (N, K)
    g = torch.nn.functional.one_hot(target.long(), num_classes).flatten(0, -2).float()
    inter, total = (p * g).sum(0), p.sum(0) + g.sum(0)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, float("nan")))


def alignment(labels: np.ndarray, affine: np.ndarray, truth: Findings,
              table: LabelTable | None = None) -> dict[str, bool]:
    """Per-field agreement (LABEL_FIELDS) of findings_from_volume(labels) with `truth`."""
    return field_agreement(findings_from_volume(np.asarray(labels), np.asarray(affine), table=table), truth)


def field_agreement(read: Findings, truth: Findings) -> dict[str, bool]:
    """Per-field agreement (LABEL_FIELDS) of already read-back findings with `truth`."""
    agree = read.agreement(truth)
    return {k: bool(agree[k]) for k in LABEL_FIELDS}


def expected_organs(findings: Findings, table: LabelTable) -> list[str]:
    """Organs that must be present: every non-tumour class unless a finding removes it."""
    removed = {n for n, side in (("kidney_left", findings.kidney_left),
                                 ("kidney_right", findings.kidney_right)) if side == "absent"}
    return [n for n in table.names[1:] if n not in removed and n not in
            {table.names[i] for i in table.tumor_ids}]


def reported_tumor_ml(findings: Findings) -> float | None:
    """Sum of sphere volumes of the reported tumour diameters (mL); None if any size is missing."""
    if not findings.tumors or any(t.size_mm is None for t in findings.tumors):
        return None
    return sum(math.pi / 6.0 * float(t.size_mm) ** 3 for t in findings.tumors) / 1000.0


def colon_components(labels: np.ndarray, colon_ids: Sequence[int]) -> int:
    """Connected components (26-connectivity) of colon ∪ tumour."""
    _, n = ndimage.label(np.isin(labels, list(colon_ids)), structure=np.ones((3, 3, 3)))
    return int(n)

"""Stage-1 data: manifest -> low-res label volumes (area pooling, tumour priority), cached in memory.

Each case becomes a uint8 label volume on the low-res grid (DESIGN.md section 6) plus its
Findings summary, report and the low-res voxel->world affine (for `findings_from_volume`).
The downsampled volumes are computed once per process and optionally cached to an .npz next to
the manifest, keyed by a hash of the manifest text, the grid and the pooling settings.

Augmentation keeps left and right: only small integer translations (background fill), never
flips or rotations that would mirror the patient.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from shared.data.downsample import downsample_labels
from shared.data.manifest import ManifestEntry, read_manifest
from shared.findings import Findings
from shared.io.nifti import read_nifti
from shared.labels import LabelTable, load_label_table

log = logging.getLogger(__name__)


def lowres_affine(affine: np.ndarray, in_shape: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Voxel->world affine of a coarser grid covering the same field of view (voxel centres)."""
    factor = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, :3] = affine[:3, :3] * factor[None, :]
    out[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((factor - 1.0) / 2.0)
    return out


@dataclass(frozen=True)
class MaskCase:
    """One case on the low-res grid."""

    case_id: str
    labels: np.ndarray  # (X, Y, Z) uint8
    affine: np.ndarray  # (4, 4) float64, low-res voxel -> world (RAS, mm)
    findings: Findings
    report: str
    split: str


def _cache_key(manifest: Path, grid: Sequence[int], table: LabelTable, threshold: float) -> str:
    h = hashlib.sha1(manifest.read_bytes())
    h.update(repr((tuple(grid), table.names, table.tumor_ids, threshold)).encode())
    return h.hexdigest()[:12]


def load_cases(
    manifest: str | Path,
    grid: Sequence[int],
    table: LabelTable,
    priority_threshold: float = 0.25,
    cache: bool = True,
) -> list[MaskCase]:
    """Every manifest case downsampled to `grid` (optionally via an .npz cache next to it)."""
    manifest = Path(manifest)
    entries: list[ManifestEntry] = read_manifest(manifest)
    key = _cache_key(manifest, grid, table, priority_threshold)
    cache_path = manifest.with_name(f"{manifest.stem}.stage1_{'x'.join(map(str, grid))}_{key}.npz")
    arrays: dict[str, np.ndarray] = {}
    if cache and cache_path.is_file():
        with np.load(cache_path) as z:
            arrays = {k: z[k] for k in z.files}
        log.info("low-res labels from cache %s", cache_path)
    else:
        for i, e in enumerate(entries):
            labels, affine = read_nifti(e.label)
            if int(labels.max()) >= table.num_classes or int(labels.min()) < 0:
                raise ValueError(f"{manifest}:{e.line} (case {e.case_id!r}): field 'label': values "
                                 f"outside 0..{table.num_classes - 1}")
            low = downsample_labels(labels.astype(np.int64), grid, table.num_classes,
                                    table.tumor_ids, priority_threshold)
            arrays[f"{e.case_id}/labels"] = low.numpy().astype(np.uint8)
            arrays[f"{e.case_id}/affine"] = lowres_affine(affine, labels.shape, grid)
            if (i + 1) % 100 == 0:
                log.info("downsampled %d/%d cases", i + 1, len(entries))
        if cache:
            fd, tmp = tempfile.mkstemp(dir=cache_path.parent, suffix=".npz.tmp")
            os.close(fd)
            try:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **arrays)
                os.replace(tmp, cache_path)
            except OSError as err:  # a read-only data folder: keep going without the cache
                log.warning("could not write label cache %s (%s)", cache_path, err)
                Path(tmp).unlink(missing_ok=True)
    return [
        MaskCase(e.case_id, arrays[f"{e.case_id}/labels"], arrays[f"{e.case_id}/affine"],
                 e.findings, e.report, e.split)
        for e in entries
    ]


class MaskDataset(Dataset):
    """Items: {"labels" (X, Y, Z) int64, "summary", "report", "findings" (JSON), "affine" (4, 4), "case_id"}."""

    def __init__(self, cases: Sequence[MaskCase], max_shift: int = 0, repeats: int = 1) -> None:
        self.cases = list(cases)
        self.max_shift = int(max_shift)
        self.repeats = max(1, int(repeats))

    def __len__(self) -> int:
        return len(self.cases) * self.repeats

    def _shift(self, labels: torch.Tensor) -> torch.Tensor:
        """Random integer translation (background fill); never mirrors the patient."""
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (labels.ndim,)).tolist()
        out = torch.zeros_like(labels)
        src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shifts, labels.shape, strict=True))
        dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shifts, labels.shape, strict=True))
        out[dst] = labels[src]
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index % len(self.cases)]
        labels = torch.from_numpy(case.labels.astype(np.int64))
        if self.max_shift > 0:
            labels = self._shift(labels)
        return {
            "labels": labels,
            "summary": case.findings.summary(),
            "report": case.report,
            "findings": case.findings.to_json(),
            "affine": torch.from_numpy(case.affine),
            "case_id": case.case_id,
        }


class MaskDataModule(L.LightningDataModule):
    """Low-res label volumes + text for the stage-1 sampler.

    Args:
        manifest: JSONL manifest (DESIGN.md section 2).
        grid: low-res grid (X, Y, Z); 64 x 64 x 40 for the phantom, 128 x 128 x 64 for real data.
        labels: labels.yaml path (None = the packaged default table).
        batch_size, num_workers: loader settings.
        max_shift: augmentation, random translation up to this many voxels per axis (0 = off).
        priority_threshold: a cell with at least this tumour fraction stays tumour.
        train_cases / val_cases: keep only the first N cases of a split (None = all).
        repeats: repeat the training set per epoch (tiny data, fewer epoch boundaries).
        cache: cache the low-res labels to an .npz next to the manifest.
    """

    def __init__(
        self,
        manifest: str = "data/phantom/manifest.jsonl",
        grid: list[int] = (64, 64, 40),  # type: ignore[assignment]
        labels: str | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        max_shift: int = 2,
        priority_threshold: float = 0.25,
        train_cases: int | None = None,
        val_cases: int | None = 8,
        test_cases: int | None = None,
        repeats: int = 1,
        cache: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.table = load_label_table(labels)
        self.cases: dict[str, list[MaskCase]] = {}

    @property
    def num_classes(self) -> int:
        return self.table.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.table.names

    @property
    def grid(self) -> list[int]:
        return [int(g) for g in self.hparams.grid]

    def setup(self, stage: str | None = None) -> None:
        if self.cases:
            return
        hp = self.hparams
        cases = load_cases(hp.manifest, self.grid, self.table, hp.priority_threshold, hp.cache)
        limits = {"train": hp.train_cases, "val": hp.val_cases, "test": hp.test_cases}
        for split, limit in limits.items():
            chosen = [c for c in cases if c.split == split]
            self.cases[split] = chosen[:limit] if limit is not None else chosen
        if not self.cases["val"]:  # tiny datasets: validate on training cases
            self.cases["val"] = self.cases["train"][: hp.val_cases or 2]
        if not self.cases["test"]:
            self.cases["test"] = self.cases["val"]
        log.info("stage-1 data: %s", {k: len(v) for k, v in self.cases.items()})

    def class_frequencies(self) -> torch.Tensor:
        """Voxel frequency (K,) of each class over the training cases."""
        counts = np.zeros(self.num_classes, dtype=np.float64)
        for c in self.cases["train"]:
            counts += np.bincount(c.labels.ravel(), minlength=self.num_classes)[: self.num_classes]
        return torch.from_numpy(counts / max(counts.sum(), 1.0))

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp = self.hparams
        ds = MaskDataset(self.cases[split], hp.max_shift if train else 0, hp.repeats if train else 1)
        return DataLoader(ds, batch_size=hp.batch_size, shuffle=train, drop_last=False,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)

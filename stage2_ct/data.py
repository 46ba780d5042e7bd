"""Stage-2 data: CT slices for the VAE, neighbouring latent-slice pairs for the slice LDM.

Cases are read once per process (`load_cases`) and kept in memory: CT as int16 HU (X, Y, Z),
labels as uint8 after the same trip the pipeline makes (down to the stage-1 grid by area pooling
with tumour priority, one-hot, trilinear back up, argmax: DESIGN.md sections 6-8), so the LDM
learns from the blocky masks it will be given at inference, not from crisp ones.

`SliceDataModule(mode="image")` yields CT slices (random crops for training) for the VAE;
`mode="pairs"` encodes every slice once with the frozen VAE (cached in memory and optionally on
disk) and yields {latent k, latent k-1 (zeros for k = 0), label slice k, position, summary}.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from shared.data.downsample import downsample_labels, upsample_probs
from shared.data.manifest import read_manifest
from shared.data.transforms import hu_to_model
from shared.io.atomic import atomic_path
from shared.io.nifti import read_nifti, reorient_to_ras
from shared.labels import LabelTable, load_label_table

log = logging.getLogger(__name__)


def roundtrip_labels(
    labels: torch.Tensor | np.ndarray, factor: Sequence[int], num_classes: int,
    priority_ids: Sequence[int] = (),
) -> torch.Tensor:
    """(X, Y, Z) labels -> down to the coarse grid (area + tumour priority) -> one-hot ->
    trilinear up -> argmax: what the pipeline hands stage 2. Returns uint8 (X, Y, Z)."""
    lab = torch.as_tensor(np.asarray(labels)).long()
    low_shape = [max(1, math.ceil(s / f)) for s, f in zip(lab.shape, factor, strict=True)]
    low = downsample_labels(lab, low_shape, num_classes, priority_ids)  # (x, y, z)
    onehot = F.one_hot(low, num_classes).movedim(-1, 0)[None].float()  # (1, K, x, y, z)
    return upsample_probs(onehot, lab.shape)[0].argmax(0).to(torch.uint8)


@dataclass
class CaseStore:
    """Cases in memory: CT (N, X, Y, Z) int16 HU, labels (N, X, Y, Z) uint8 (round-tripped)."""

    case_ids: list[str]
    hu: torch.Tensor
    labels: torch.Tensor
    summaries: list[str]
    affines: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.case_ids)


def load_cases(
    manifest: str | Path, split: str, max_cases: int | None, table: LabelTable,
    mask_downsample: Sequence[int] | None = (2, 2, 2),
) -> CaseStore:
    """Read a split of a manifest into memory (first `max_cases` cases, manifest order)."""
    entries = read_manifest(manifest, split=split)[: max_cases or None]
    if not entries:
        raise ValueError(f"{manifest}: no cases in split {split!r}")
    hus, labs, ids, summaries, affines = [], [], [], [], []
    shape = None
    for e in entries:
        ct, aff = read_nifti(e.image)
        lab, aff_l = read_nifti(e.label)
        ct, aff = reorient_to_ras(ct, aff)
        lab, _ = reorient_to_ras(lab, aff_l)
        if shape is None:
            shape = ct.shape
        if ct.shape != shape or lab.shape != shape:
            raise ValueError(f"{e.image}: shape {ct.shape} (label {lab.shape}) differs from the first "
                             f"case's {shape}; stage 2 needs one grid (resample the dataset)")
        lab_t = torch.from_numpy(lab.astype(np.uint8))
        if mask_downsample is not None:
            lab_t = roundtrip_labels(lab_t, mask_downsample, table.num_classes, table.tumor_ids)
        hus.append(torch.from_numpy(np.clip(ct, -1024, 3071).astype(np.int16)))
        labs.append(lab_t)
        ids.append(e.case_id)
        summaries.append(e.findings.summary())
        affines.append(aff)
    log.info("%s [%s]: %d cases of %s in memory", manifest, split, len(ids), shape)
    return CaseStore(ids, torch.stack(hus), torch.stack(labs), summaries, affines)


class ImageSlices(Dataset):
    """CT slices in model space (1, H, W); random `crop` x `crop` windows when crop is set."""

    def __init__(self, store: CaseStore, crop: int | None = None, slice_stride: int = 1) -> None:
        self.hu, self.crop = store.hu, crop
        n, _, _, z = store.hu.shape
        self.index = [(i, k) for i in range(n) for k in range(0, z, slice_stride)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        i, k = self.index[idx]
        img = self.hu[i, :, :, k].float()  # (H, W)
        if self.crop is not None and self.crop < min(img.shape):
            x0, y0 = (int(torch.randint(0, s - self.crop + 1, (1,))) for s in img.shape)
            img = img[x0 : x0 + self.crop, y0 : y0 + self.crop]
        return {"image": hu_to_model(img)[None]}


class LatentPairs(Dataset):
    """(case, k) -> latent k, latent k-1 (zeros for k = 0), labels k, position and summary."""

    def __init__(self, latents: torch.Tensor, store: CaseStore) -> None:
        self.latents, self.store = latents, store  # latents (N, Z, C, h, w)
        n, z = latents.shape[:2]
        self.index = [(i, k) for i in range(n) for k in range(z)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        i, k = self.index[idx]
        z_count = self.latents.shape[1]
        latent = self.latents[i, k].float()
        prev = self.latents[i, k - 1].float() if k > 0 else torch.zeros_like(latent)
        return {
            "latent": latent, "prev": prev,
            "labels": self.store.labels[i, :, :, k].long(),  # (H, W)
            "position": torch.tensor([k / max(1, z_count - 1)], dtype=torch.float32),
            "text": self.store.summaries[i],
        }


@torch.no_grad()
def encode_store(vae: torch.nn.Module, store: CaseStore, batch_size: int = 64) -> torch.Tensor:
    """All slices -> scaled VAE latents (N, Z, C, h, w) stored as float16 on the CPU (encoder in fp32,
    on the VAE's device)."""
    n, _, _, z = store.hu.shape
    slices = store.hu.permute(0, 3, 1, 2).reshape(n * z, 1, *store.hu.shape[1:3])  # (N Z, 1, H, W)
    out = []
    device = next(vae.parameters()).device
    for s in range(0, len(slices), batch_size):
        x = hu_to_model(slices[s : s + batch_size].float().to(device))
        out.append(vae.encode_latents(x).float().half().cpu())  # fp32 encoder: exact latents
    lat = torch.cat(out)
    return lat.reshape(n, z, *lat.shape[1:])


class SliceDataModule(L.LightningDataModule):
    """CT slices (mode "image", for the VAE) or latent slice pairs (mode "pairs", for the LDM).

    Args:
        manifest: phantom / dataset manifest (JSONL).
        mode: "image" or "pairs".
        vae_path: VAE component artifact (needed for "pairs"; usually set by the LDM config).
        labels: labels.yaml (None = the default table).
        max_train_cases / max_val_cases: first N cases of each split (memory and start-up time).
        mask_downsample: factor to the stage-1 grid for the label round trip (None = crisp).
        crop: training crop size for "image" mode (None = full slices).
        val_slice_stride: every n-th slice of the validation cases.
        latent_cache_dir: folder for the encoded latents (keyed by manifest, VAE weights, cases).
    """

    def __init__(
        self,
        manifest: str = "data/phantom/manifest.jsonl",
        mode: str = "image",
        vae_path: str | None = None,
        labels: str | None = None,
        max_train_cases: int | None = None,
        max_val_cases: int | None = 10,
        mask_downsample: list[int] | None = None,
        crop: int | None = None,
        val_slice_stride: int = 4,
        batch_size: int = 32,
        num_workers: int = 0,
        latent_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("image", "pairs"):
            raise ValueError(f"mode {mode!r} must be 'image' or 'pairs'")
        self.save_hyperparameters()
        self.table = load_label_table(labels)
        self.train_store: CaseStore | None = None
        self.val_store: CaseStore | None = None
        self.train_latents: torch.Tensor | None = None
        self.val_latents: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.table.num_classes

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        down = hp.mask_downsample if hp.mask_downsample is None else tuple(hp.mask_downsample)
        if self.train_store is None:
            self.train_store = load_cases(hp.manifest, "train", hp.max_train_cases, self.table, down)
            self.val_store = load_cases(hp.manifest, "val", hp.max_val_cases, self.table, down)
        if hp.mode == "pairs" and self.train_latents is None:
            if hp.vae_path is None:
                raise ValueError("SliceDataModule(mode='pairs') needs vae_path (a VAE artifact)")
            self.train_latents = self._latents(self.train_store, "train")
            self.val_latents = self._latents(self.val_store, "val")

    def _latents(self, store: CaseStore, split: str) -> torch.Tensor:
        from stage2_ct.vae_module import load_vae

        weights = Path(self.hparams.vae_path).with_suffix(".safetensors")
        key = hashlib.sha1()
        key.update(Path(self.hparams.manifest).read_bytes())
        key.update(weights.read_bytes())
        key.update(repr((split, store.case_ids, self.hparams.mask_downsample)).encode())
        cache = (Path(self.hparams.latent_cache_dir) / f"latents_{split}_{key.hexdigest()[:16]}.pt"
                 if self.hparams.latent_cache_dir else None)
        if cache is not None and cache.is_file():
            log.info("latents from %s", cache)
            return torch.load(cache, weights_only=True)
        # on the trainer's accelerator (a GPU encodes the phantom's 16k slices in seconds)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        vae = load_vae(self.hparams.vae_path, map_location=device)  # channels-last: faster on CPU
        lat = encode_store(vae, store)
        log.info("encoded %s latents %s (std %.3f)", split, tuple(lat.shape), float(lat.float().std()))
        if cache is not None and (self.trainer is None or self.trainer.is_global_zero):
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                torch.save(lat, tmp)
        return lat

    def _dataset(self, train: bool) -> Dataset:
        store = self.train_store if train else self.val_store
        if self.hparams.mode == "image":
            if train:
                return ImageSlices(store, crop=self.hparams.crop)
            return ImageSlices(store, slice_stride=self.hparams.val_slice_stride)
        return LatentPairs(self.train_latents if train else self.val_latents, store)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(True), batch_size=self.hparams.batch_size, shuffle=True,
                          drop_last=True, num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset(False), batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=0)

    def scale_slices(self, n: int = 512) -> torch.Tensor:
        """A fixed, evenly spread set of training slices (model space, (n, 1, H, W)): the same on
        every rank, for the latent scale factor."""
        hu = self.train_store.hu  # (N, X, Y, Z)
        flat = hu.permute(0, 3, 1, 2).reshape(-1, *hu.shape[1:3])
        idx = torch.linspace(0, len(flat) - 1, min(n, len(flat))).round().long()
        return hu_to_model(flat[idx].float())[:, None]

"""Report <-> anatomy CLIP pretraining (DESIGN.md section 4.3): text tower vs a small 3D mask encoder.

open_clip's contrastive loss (`ClipLoss`) between `TextEncoder.encode(texts).pooled` and
`MaskEncoder(labels)`, both L2-normalised, with a learnable logit scale (CLIP's init 1/0.07,
clamped at 100). The text of a case is its `Findings.summary()`, or with probability
`report_prob` its free-text report (augmentation); masks get small random shifts from the data
module (never flips: laterality matters).

What it yields (`export_clip`): a frozen text-encoder artifact both stages can load
(`NAME.{safetensors,yaml}`, the TextEncoder's init_args with `frozen: true`) and the mask
encoder next to it (`NAME_mask.*`) for zero-shot alignment scores (stage1_mask.clip_eval).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn

from shared.findings import Findings
from shared.io.artifact import artifact_stem, save_component
from shared.text.encoder import TextEncoder
from stage1_mask.clip_eval import PROBES, zero_shot

log = logging.getLogger(__name__)


class MaskEncoder(nn.Module):
    """Label volume -> embedding: class fractions on a `input_pool`x coarser grid -> strided 3D convs.

    The input is first area-pooled to per-class fractions (labels: an exact bincount, no full-
    resolution one-hot; probabilities: average pooling — the same quantity), then `channels`
    stride-2 convs. The last feature map is average-pooled to a fixed `pooled_shape` and
    flattened (not globally pooled), so *where* a structure lies — the tumour's colon segment,
    the kidney's side — reaches the embedding. Any grid works; ~0.57M parameters by default.
    """

    def __init__(
        self,
        num_classes: int = 12,
        embed_dim: int = 128,
        channels: Sequence[int] = (32, 64, 64),
        input_pool: int = 2,
        pooled_shape: Sequence[int] = (4, 4, 3),
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        self.init_args = {"num_classes": int(num_classes), "embed_dim": int(embed_dim),
                          "channels": [int(c) for c in channels], "input_pool": int(input_pool),
                          "pooled_shape": [int(s) for s in pooled_shape], "norm_groups": int(norm_groups)}
        self.num_classes, self.embed_dim, self.input_pool = int(num_classes), int(embed_dim), int(input_pool)
        layers: list[nn.Module] = []
        c_in = self.num_classes
        for c in channels:
            layers += [nn.Conv3d(c_in, c, kernel_size=3, stride=2, padding=1),
                       nn.GroupNorm(math.gcd(norm_groups, c), c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(tuple(pooled_shape))
        self.proj = nn.Linear(c_in * math.prod(pooled_shape), self.embed_dim)

    def fractions(self, x: torch.Tensor) -> torch.Tensor:
        """labels (B, X, Y, Z) int or probabilities (B, K, X, Y, Z) -> class fractions (B, K, X/f, Y/f, Z/f)."""
        f, k = self.input_pool, self.num_classes
        if x.is_floating_point():
            return F.avg_pool3d(x, f, ceil_mode=True) if f > 1 else x
        b, *shape = x.shape
        if f == 1 or any(n % f for n in shape):  # general path: one-hot, then the same pooling
            return self.fractions(F.one_hot(x.long(), k).movedim(-1, 1).float())
        cx, cy, cz = (n // f for n in shape)
        ar = lambda n: torch.arange(n, device=x.device) // f  # noqa: E731
        cell = (ar(shape[0])[:, None, None] * cy + ar(shape[1])[None, :, None]) * cz + ar(shape[2])  # (X, Y, Z)
        idx = (torch.arange(b, device=x.device)[:, None, None, None] * (cx * cy * cz) + cell) * k + x.long()
        counts = torch.bincount(idx.flatten(), minlength=b * cx * cy * cz * k)  # one pass, no one-hot
        return counts.view(b, cx, cy, cz, k).movedim(-1, 1).float() / f**3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """labels (B, X, Y, Z) int or probabilities (B, K, X, Y, Z) -> embedding (B, E), not normalised."""
        h = self.pool(self.convs(self.fractions(x)))  # (B, C, *pooled_shape)
        return self.proj(h.flatten(1))


class ClipModule(L.LightningModule):
    """Contrastive report <-> label-volume pretraining.

    Args:
        text_encoder: TextEncoder keyword arguments (trained here; exported frozen).
        mask_encoder: MaskEncoder keyword arguments (`num_classes` and `embed_dim` are filled in).
        num_classes: label classes (linked from the data module's labels.yaml).
        grid: low-res grid of the training volumes (linked from the data; artifact metadata).
        lr / text_lr: AdamW learning rates of the mask encoder (+ logit scale) and of the text tower.
        weight_decay: AdamW weight decay on matrices (not on norms, biases, logit scale).
        warmup_steps: linear warm-up, then cosine decay to 10% at `trainer.max_steps`.
        report_prob: probability of training on the free-text report instead of the summary.
        hard_negative_weight: weight of the hard-negative term: each mask also has to beat its
            own summary with one random mask-decidable field changed (`clip_eval.PROBES`: tumour
            site, spleen, a kidney, bladder), on top of the batch's texts (0 = plain CLIP loss).
        init_logit_scale / max_logit_scale: CLIP's temperature init (1/0.07) and clamp (100).
        export_path: artifact stem written at the end of fit (None = don't export).
    """

    def __init__(
        self,
        text_encoder: dict[str, Any] | None = None,
        mask_encoder: dict[str, Any] | None = None,
        num_classes: int = 12,
        grid: list[int] | None = None,
        lr: float = 1e-3,
        text_lr: float = 5e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        report_prob: float = 0.2,
        hard_negative_weight: float = 1.0,
        init_logit_scale: float = 1 / 0.07,
        max_logit_scale: float = 100.0,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.text_encoder = TextEncoder(**{**(text_encoder or {}), "frozen": False})
        self.mask_encoder = MaskEncoder(**{**(mask_encoder or {}), "num_classes": num_classes,
                                           "embed_dim": self.text_encoder.embed_dim})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
        self.loss_fn = ClipLoss()
        self._val: dict[str, list] = {}

    def setup(self, stage: str) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:  # gather negatives across ranks
            self.loss_fn = ClipLoss(gather_with_grad=True, rank=self.global_rank,
                                    world_size=self.trainer.world_size)

    # -- features and loss --------------------------------------------------------------------
    def texts(self, batch: dict[str, Any], augment: bool) -> list[str]:
        """Summaries, each swapped for its report with probability `report_prob` when augmenting."""
        p = self.hparams.report_prob if augment else 0.0
        return [" ".join(r.split()) if random.random() < p else s
                for s, r in zip(batch["summary"], batch["report"], strict=True)]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.text_encoder.encode(texts)[2], dim=-1)  # (B, E)

    def encode_mask(self, labels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mask_encoder(labels), dim=-1)  # (B, E)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.hparams.max_logit_scale)

    @staticmethod
    def hard_negative(findings: Findings) -> str:
        """The summary with one random mask-decidable field set to another of its values."""
        options = [p for probe in PROBES.values() if (p := probe(findings)) is not None]
        candidates, truth = random.choice(options)
        return random.choice([c for i, c in enumerate(candidates) if i != truth]).summary()

    def loss(self, batch: dict[str, Any], augment: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask_f = self.encode_mask(batch["labels"])
        text_f = self.encode_text(self.texts(batch, augment))
        loss = self.loss_fn(mask_f, text_f, self.scale())
        if self.hparams.hard_negative_weight > 0 and "findings" in batch:
            neg_f = self.encode_text([self.hard_negative(Findings.from_json(f)) for f in batch["findings"]])
            logits = self.scale() * mask_f @ torch.cat([text_f, neg_f]).T  # (B, 2B): batch + hard negatives
            target = torch.arange(len(mask_f), device=mask_f.device)
            loss = loss + self.hparams.hard_negative_weight * F.cross_entropy(logits, target)
        sim = mask_f @ text_f.T  # (B, B)
        target = torch.arange(sim.shape[0], device=sim.device)
        acc = ((sim.argmax(1) == target).float().mean() + (sim.argmax(0) == target).float().mean()) / 2
        return loss, {"acc": acc, "mask_f": mask_f, "text_f": text_f}

    # -- Lightning hooks ----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, out = self.loss(batch, augment=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"CLIP loss is {loss.item()} at step {self.global_step}")
        bs = len(batch["summary"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc", out["acc"], batch_size=bs)
        self.log("train/logit_scale", self.scale().detach(), batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # as open_clip: keep the parameter itself inside [0, ln max]
            self.logit_scale.clamp_(0, math.log(self.hparams.max_logit_scale))

    def on_validation_epoch_start(self) -> None:
        self._val = {"mask_f": [], "findings": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, out = self.loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["summary"]), sync_dist=True)
        self._val["mask_f"].append(out["mask_f"])
        self._val["findings"] += [Findings.from_json(f) for f in batch["findings"]]

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("findings"):
            return
        mask_f = torch.cat(self._val["mask_f"])
        scores = zero_shot(self.text_encoder, mask_f, self._val["findings"])
        for name, s in scores.items():
            if s["n"]:
                self.log(f"val/zero_shot/{name}", s["accuracy"], batch_size=s["n"], sync_dist=True)
        self._val = {}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay, text = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("text_encoder."):
                text.append(p)
            elif p.ndim >= 2:
                decay.append(p)
            else:
                no_decay.append(p)
        opt = torch.optim.AdamW([
            {"params": decay, "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"params": no_decay, "lr": hp.lr, "weight_decay": 0.0},
            {"params": text, "lr": hp.text_lr, "weight_decay": hp.weight_decay},
        ], betas=(0.9, 0.98), eps=1e-6)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            if total is None or total <= hp.warmup_steps:
                return 1.0
            progress = min(1.0, (step - hp.warmup_steps) / (total - hp.warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_end(self) -> None:
        if self.hparams.export_path and self.trainer.is_global_zero:
            export_clip(self, self.hparams.export_path)


def export_clip(module: ClipModule, path: str | Path) -> tuple[Path, Path]:
    """Write the frozen text encoder (`path.*`) and the mask encoder (`path_mask.*`); return both stems."""
    stem = artifact_stem(path)
    mask_stem = stem.with_name(stem.name + "_mask")
    stem.parent.mkdir(parents=True, exist_ok=True)
    hp = module.hparams
    meta = {"trained_by": "stage1_mask.clip_module.ClipModule", "global_step": int(module.global_step),
            "logit_scale": float(module.scale().detach()), "grid": list(hp.grid) if hp.grid else None}
    text_args = {**module.text_encoder.init_args, "frozen": True}
    save_component(module.text_encoder, stem, text_args, {**meta, "mask_encoder": mask_stem.name})
    save_component(module.mask_encoder, mask_stem, module.mask_encoder.init_args,
                   {**meta, "text_encoder": stem.name})
    log.info("exported CLIP text encoder to %s and mask encoder to %s", stem, mask_stem)
    return stem, mask_stem

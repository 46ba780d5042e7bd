"""`MaskDiffusionModule`: training of the volumetric categorical-diffusion mask sampler (CCDM).

Loss: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) per voxel, weighted by the true class
(sqrt-inverse-frequency weights, capped; the tumour, ~0.03% of the voxels, gets its own weight
`tumor_weight`), plus an optional cross-entropy on the x0 LOGITS. A weighted CE's optimum is
p_w(k) ∝ w_k p(k), which inflates heavily weighted classes when sampled; the sampler therefore
carries the logit adjustment -log w_k (Menon et al. 2021) and applies it when sampling
(`sample_masks(prior_correction=1)`), so the tumour gets the gradient share it needs in training
without coming out oversized. Training t ~ p(t) ∝ (t + 1)^γ
(γ = 1.5 as in the official GuideGen code: more draws at the noisy steps where the anatomy and
the tumour site are decided from the text alone; the near-clean steps are almost copies).
Condition dropout trains the null context for classifier-free guidance; an EMA copy of the
sampler (decay 0.999 with warm-up) is used for validation, test, predict and export.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import lightning as L
import numpy as np
import torch

from shared.findings import Findings
from shared.io.artifact import load_component
from shared.nets.ema import ema_decay, ema_update
from shared.text.encoder import trim_context
from stage1_mask.metrics import LABEL_FIELDS, alignment, dice_per_class
from stage1_mask.sampler import MaskSampler, drop_condition, sample_masks

log = logging.getLogger(__name__)


def class_weights_from_frequencies(
    freq: torch.Tensor, cap: float = 3.0, overrides: dict[int, float] | None = None
) -> torch.Tensor:
    """w_k = clamp(sqrt(f_ref / f_k), 1, cap), f_ref = median foreground frequency; `overrides`
    sets single classes (e.g. the tumour) to a given weight."""
    fg = freq[1:][freq[1:] > 0]
    ref = fg.median() if len(fg) else freq.new_tensor(1.0)
    w = (ref / freq.clamp_min(1e-12)).sqrt().clamp(1.0, cap).float()
    for k, v in (overrides or {}).items():
        w[k] = float(v)
    return w


class MaskDiffusionModule(L.LightningModule):
    """Args:
        num_classes, class_names, grid: linked from the data module (labels.yaml, grid).
        sampler: MaskSampler keyword arguments (UNet preset/overrides, text encoder, scheduler).
        text_encoder_artifact: a frozen text-encoder component (e.g. the CLIP pretraining's),
            loaded in `setup()`; None trains the encoder given in `sampler` jointly.
        lr, text_lr, weight_decay, warmup_steps: AdamW with linear warm-up.
        class_weight_cap: cap of the sqrt-inverse-frequency class weights (1 = unweighted).
        tumor_weight: loss weight of the tumour class(es) (None = the capped rule above).
        ce_weight: weight of the auxiliary cross-entropy on the x0 logits.
        t_power: γ of the timestep distribution p(t) ∝ (t + 1)^γ (0 = uniform).
        p_uncond: condition dropout probability.
        ema_decay: EMA decay (with warm-up).
        val_steps, val_guidance, val_batches: validation sampling (few steps) and how many
            val batches are sampled.
    """

    def __init__(
        self,
        num_classes: int = 12,
        class_names: list[str] | None = None,
        grid: list[int] = (64, 64, 40),  # type: ignore[assignment]
        sampler: dict[str, Any] | None = None,
        text_encoder_artifact: str | None = None,
        lr: float = 1e-3,
        text_lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        class_weight_cap: float = 3.0,
        tumor_weight: float | None = None,
        ce_weight: float = 0.5,
        t_power: float = 1.5,
        p_uncond: float = 0.1,
        ema_decay: float = 0.999,
        val_steps: int = 10,
        val_guidance: float = 2.0,
        val_batches: int = 4,
        sample_steps: int = 25,
        sample_guidance: float = 2.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.grid = [int(g) for g in grid]
        self.model = MaskSampler(num_classes, **(sampler or {}))
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.register_buffer("class_weights", torch.zeros(num_classes))  # set in setup()
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.spacing: list[float] | None = None

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        if self.hparams.text_encoder_artifact and not getattr(self, "_text_loaded", False):
            encoder = load_component(self.hparams.text_encoder_artifact).set_frozen(True)
            self.model.attach_text_encoder(encoder)
            self.ema_model.attach_text_encoder(copy.deepcopy(encoder))
            self._text_loaded = True
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and stage == "fit" and not bool(self.class_weights.any()):
            tw = self.hparams.tumor_weight
            overrides = {k: tw for k in dm.table.tumor_ids} if tw is not None else None
            self.class_weights.copy_(class_weights_from_frequencies(
                dm.class_frequencies(), self.hparams.class_weight_cap, overrides))
            for sampler in (self.model, self.ema_model):
                sampler.logit_bias.copy_(-self.class_weights.log())
            log.info("class weights %s", [round(w, 2) for w in self.class_weights.tolist()])
        if dm is not None and dm.cases.get("train"):
            aff = dm.cases["train"][0].affine
            self.spacing = [float(v) for v in np.linalg.norm(aff[:3, :3], axis=0)]

    def configure_optimizers(self) -> dict[str, Any]:
        text = self.model.text_encoder
        text_params = [p for p in (text.parameters() if text else []) if p.requires_grad]
        ids = {id(p) for p in text_params}
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad and id(p) not in ids],
                   "lr": self.hparams.lr}]
        if text_params:
            groups.append({"params": text_params, "lr": self.hparams.text_lr})
        opt = torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- training
    def sample_t(self, batch: int) -> torch.Tensor:
        """t (B,) ~ p(t) ∝ (t + 1)^γ over [0, T-1]."""
        T = self.model.scheduler.num_train_timesteps
        w = torch.arange(1, T + 1, dtype=torch.float64, device=self.device) ** self.hparams.t_power
        return torch.multinomial(w, batch, replacement=True)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x0 = batch["labels"]  # (B, X, Y, Z) int64
        b = x0.shape[0]
        cond = drop_condition(self.model.encode(batch["summary"]), self.model.null_context(b),
                              self.hparams.p_uncond)
        tokens, mask, pooled = trim_context(cond)[0]
        t = self.sample_t(b)
        xt = self.model.scheduler.q_sample(x0, t)  # (B, K, X, Y, Z) one-hot
        logits = self.model(xt, t, tokens, mask, pooled)
        weights = self.class_weights if bool(self.class_weights.any()) else None
        out = self.model.scheduler.loss(logits, x0, xt, t, weights, self.hparams.ce_weight)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(
                f"stage 1: non-finite training loss ({out['loss'].item()}) at global step "
                f"{self.global_step} (epoch {self.current_epoch}, batch {batch_idx}); stopping")
        self.log_dict({"train/loss": out["loss"], "train/kl": out["kl"], "train/ce": out["ce"]},
                      prog_bar=True, batch_size=b, sync_dist=False)
        return out["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update (before any checkpoint of this step is saved)."""
        super().optimizer_step(*args, **kwargs)
        decay = ema_decay(int(self.ema_updates), self.hparams.ema_decay)
        ema_update(self.ema_model, self.model, decay)
        self.ema_updates += 1

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict[str, Any], batch_idx: int, prefix: str) -> None:
        if batch_idx >= self.hparams.val_batches:
            return
        gen = torch.Generator(device=self.device).manual_seed(1000 + batch_idx)
        probs = sample_masks(self.ema_model, batch["summary"], gen, self.hparams.val_steps,
                             self.hparams.val_guidance, grid=self.grid)
        pred = probs.argmax(1)  # (B, X, Y, Z)
        dice = dice_per_class(pred, batch["labels"], self.hparams.num_classes)
        names = self.hparams.class_names or [str(k) for k in range(self.hparams.num_classes)]
        b = pred.shape[0]
        for k in range(1, len(names)):
            if not math.isnan(float(dice[k])):
                self.log(f"{prefix}/dice/{names[k]}", dice[k], batch_size=b, sync_dist=True)
        self.log(f"{prefix}/dice/mean", dice[1:].nanmean(), batch_size=b, sync_dist=True,
                 prog_bar=True)
        truths = [Findings.from_json(j) for j in batch["findings"]]
        agree = [alignment(p.cpu().numpy(), a.cpu().numpy(), f)
                 for p, a, f in zip(pred, batch["affine"], truths, strict=True)]
        for field in LABEL_FIELDS:
            self.log(f"{prefix}/align/{field}", float(np.mean([a[field] for a in agree])),
                     batch_size=b, sync_dist=True, prog_bar=field == "tumor_sites")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        gen = torch.Generator(device=self.device).manual_seed(batch_idx)
        probs = sample_masks(self.ema_model, batch["summary"], gen, self.hparams.sample_steps,
                             self.hparams.sample_guidance, grid=self.grid)
        return {"case_id": batch["case_id"], "labels": probs.argmax(1).to(torch.uint8),
                "affine": batch["affine"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["stage1_spacing"] = self.spacing
        checkpoint["stage1_unet_args"] = dict(self.model.unet_args)  # resolved preset
        if self.model.text_encoder is not None:  # rebuilds an attached artifact encoder on export
            checkpoint["stage1_text_encoder_args"] = dict(self.model.text_encoder.init_args)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.spacing = checkpoint.get("stage1_spacing", self.spacing)

    # ---------------------------------------------------------------- export
    def artifact_metadata(self) -> dict[str, Any]:
        hp = self.hparams
        return {"grid": self.grid, "spacing": self.spacing, "class_names": hp.class_names,
                "num_classes": hp.num_classes}

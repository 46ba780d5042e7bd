"""SliceLDMModule: conditional latent diffusion of axial CT slices (DESIGN.md section 7).

Slice k is generated in the frozen VAE's latent space (4 x 32 x 32 for 128^2 slices) from
[noisy latent k | noise-augmented clean latent k-1 (zeros for k = 0) | mask slice k one-hot on
the latent grid] + slice position + text tokens (cross-attention; contrast phase and fatty liver
exist only in the text). DDPM training (v-prediction by default) with text dropout for
classifier-free guidance; the scheduler, UNet and sampling loop are the shared ones.

The module trains the inference component itself: `self.model` is a SliceGenerator (denoiser with
its class map, text encoder, scheduler; `denoiser`, `text`, `scheduler`, `vae` are views of it),
and an EMA copy of the denoiser and text encoder is kept beside it. The VAE is loaded from its
artifact in `setup()` (never in `__init__`), attached to the generator and not saved in the
checkpoint. `export_ldm` writes the UNet, text encoder and class map as component artifacts plus
the metadata and `inference:` block `stage2_ct.generator.load_slice_ldm` rebuilds it from.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from shared.diffusion import GaussianScheduler
from shared.io.artifact import artifact_stem, save_component
from shared.nets import build_unet
from shared.nets.ema import ema_decay, ema_update
from shared.text.encoder import TextEncoder
from stage2_ct.common import check_finite, warmup_cosine
from stage2_ct.conditioning import (
    ClassTextEmbedding,
    SliceDenoiser,
    augment_prev,
    mask_to_latent_grid,
    null_text_inputs,
    text_inputs,
    trim_text_inputs,
)
from stage2_ct.generator import SliceGenerator, SliceSampling, load_ldm_weights
from stage2_ct.vae_module import load_vae

log = logging.getLogger(__name__)


class SliceLDMModule(L.LightningModule):
    """Args:
        vae_path: VAE component artifact (trained first by the CLI when missing).
        vae_config: VAE config the CLI trains when vae_path is missing.
        num_classes: label classes K (mask channels).
        latent_channels: VAE latent channels C.
        unet_preset / unet_overrides: shared.nets preset (in_channels = 2C + K and
            extra_embed_dim = 2 are set here; context_dim follows the text encoder).
        text_encoder: TextEncoder init args; text_encoder_artifact: a trained one instead.
        init_from: an LDM artifact whose UNet, class map and text encoder (its EMA weights) start
            this fit (fine-tuning, or continuing a run without its checkpoint); same architecture.
        scheduler: GaussianScheduler init args.
        p_uncond: text dropout (null context) for classifier-free guidance.
        prev_noise_max_t / prev_noise_t: previous-latent augmentation level range in training / at inference.
        noise_corr / sample_steps / guidance / level_sigma: inference only, written to the
            artifact's `inference:` block with prev_noise_t (stage2_ct.generator.SliceSampling).
        p_prev_drop: probability of training with a zero previous slice at any k.
        lr, text_lr, warmup_steps, decay_steps: AdamW and its warm-up + cosine schedule.
        export_path: where `on_train_end` writes the LDM artifact (None = not exported).
        pooled_text: also add the pooled text embedding (B, E) to the time embedding
            (`cond_vector`): a global path for what is global in the text (contrast phase,
            fatty liver), besides the token cross-attention.
        ema_decay: EMA of the denoiser and text encoder weights (with warm-up; 0 = off); the
            export writes the EMA weights.
        class_embed_dim: d > 0 adds the text-painted class map (d channels; needs pooled_text):
            per-class vectors from the pooled text painted onto the mask (conditioning.py).
        channels_last: train the denoiser (and its EMA copy) in channels-last memory format (1.25x
            faster steps in fp32 on 2 Intel Xeon threads, bench/train_step.py; off by default so
            the shipped recipe stays as it was trained).
    """

    def __init__(
        self,
        vae_path: str | None = None,
        vae_config: str | list[str] | None = "stage2_ct/configs/vae/phantom.yaml",
        num_classes: int = 12,
        latent_channels: int = 4,
        unet_preset: str = "stage2_phantom",
        unet_overrides: dict[str, Any] | None = None,
        text_encoder: dict[str, Any] | None = None,
        text_encoder_artifact: str | None = None,
        init_from: str | None = None,
        scheduler: dict[str, Any] | None = None,
        p_uncond: float = 0.1,
        prev_noise_max_t: int = 300,
        prev_noise_t: int = 100,
        p_prev_drop: float = 0.02,
        lr: float = 5e-4,
        text_lr: float = 2e-4,
        warmup_steps: int = 200,
        decay_steps: int | None = None,
        export_path: str | None = None,
        pooled_text: bool = False,
        ema_decay: float = 0.0,
        class_embed_dim: int = 0,
        noise_corr: float = 0.0,
        sample_steps: int = 20,
        guidance: float = 1.0,
        level_sigma: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if class_embed_dim > 0 and not pooled_text:
            raise ValueError("model.class_embed_dim > 0 needs model.pooled_text: true")
        self.strict_loading = False  # the frozen VAE is not in the checkpoint
        text = TextEncoder(**(text_encoder or {}))
        unet_args = {**(unet_overrides or {}), "in_channels": 2 * latent_channels + num_classes + class_embed_dim,
                     "out_channels": latent_channels,
                     "extra_embed_dim": 2 + (text.embed_dim if pooled_text else 0),
                     "context_dim": text.width}
        unet, self.unet_args = build_unet(unet_preset, **unet_args)
        self.scheduler_args = dict(scheduler or {})
        noise = GaussianScheduler(**self.scheduler_args)
        self.class_embed_args = {"text_dim": text.embed_dim, "num_classes": num_classes, "dim": class_embed_dim}
        self.init_trained_steps: int | None = None  # trained_steps of init_from, recorded on export
        class_embed = ClassTextEmbedding(**self.class_embed_args) if class_embed_dim > 0 else None
        denoiser = SliceDenoiser(unet, noise.num_train_timesteps, class_embed)
        # the inference component this module trains (its VAE is attached in setup, not saved)
        self.model = SliceGenerator(denoiser, text, None, noise, num_classes, latent_channels, pooled_text,
                                    self.sampling_defaults())
        self.ema = None
        if ema_decay > 0:  # (denoiser, text) averaged weights, updated after each optimizer step
            self.ema = torch.nn.ModuleDict({"denoiser": copy.deepcopy(self.denoiser),
                                            "text": copy.deepcopy(self.text)}).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    @property
    def denoiser(self) -> SliceDenoiser:
        return self.model.denoiser

    @property
    def text(self) -> TextEncoder:
        return self.model.text

    @property
    def scheduler(self) -> GaussianScheduler:
        return self.model.scheduler

    @property
    def vae(self) -> torch.nn.Module | None:
        return self.model.vae

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "num_classes", self.hparams.num_classes) != self.hparams.num_classes:
            raise ValueError(f"model.num_classes = {self.hparams.num_classes} but the data's label "
                             f"table has {dm.num_classes} classes")
        if self.hparams.text_encoder_artifact and stage == "fit":
            from shared.io.artifact import load_component

            trained = load_component(self.hparams.text_encoder_artifact)
            self.text.load_state_dict(trained.state_dict())
            if self.ema is not None:
                self.ema["text"].load_state_dict(trained.state_dict())
        if self.hparams.init_from and stage == "fit":  # a resumed checkpoint is restored after this
            try:
                self.init_trained_steps = load_ldm_weights(self.denoiser, self.text,
                                                           self.hparams.init_from).get("trained_steps")
            except (RuntimeError, KeyError) as err:
                raise ValueError(f"model.init_from {self.hparams.init_from}: does not fit this model "
                                 f"(unet_overrides, text_encoder, class_embed_dim): {err}") from err
            if self.ema is not None:
                self.ema["denoiser"].load_state_dict(self.denoiser.state_dict())
                self.ema["text"].load_state_dict(self.text.state_dict())
            log.info("denoiser and text encoder initialised from %s", self.hparams.init_from)
        if self.vae is None and self.hparams.vae_path:
            vae = load_vae(self.hparams.vae_path, map_location=self.device)
            if vae.latent_channels != self.hparams.latent_channels:
                raise ValueError(f"model.latent_channels = {self.hparams.latent_channels} but the VAE "
                                 f"{self.hparams.vae_path} has {vae.latent_channels} latent channels")
            self.model.attach_vae(vae)

    def on_fit_start(self) -> None:
        if self.hparams.get("channels_last"):
            self.denoiser.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema["denoiser"].to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for k in [k for k in state if k.startswith("model.vae.")]:
            del state[k]
        checkpoint["init_trained_steps"] = self.init_trained_steps  # an in-place fine-tune's start

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_state_dict(checkpoint["state_dict"])
        if "init_trained_steps" in checkpoint:
            self.init_trained_steps = checkpoint["init_trained_steps"]

    # ------------------------------------------------------------------ conditioning
    def encode_text(self, texts: list[str], drop: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        """Denoiser text inputs (conditioning.text_inputs); rows where `drop` is True get the null context."""
        return text_inputs(self.text, texts, self.hparams.pooled_text, drop)

    def null_text(self, batch: int) -> dict[str, torch.Tensor | None]:
        return null_text_inputs(self.text, batch, self.hparams.pooled_text)

    def generator(self, vae: torch.nn.Module | None = None, ema: bool = True) -> SliceGenerator:
        """The inference component on the EMA weights (where there are some and `ema`), sharing
        them, else the trained one itself (`self.model`); `vae` defaults to the module's."""
        vae = vae if vae is not None else self.vae
        if vae is None:
            raise ValueError("no VAE: pass vae or set model.vae_path")
        if not (ema and self.ema is not None):
            if self.model.vae is not vae:
                self.model.attach_vae(vae)
            return self.model
        return SliceGenerator(self.ema["denoiser"], self.ema["text"], vae, self.scheduler, self.hparams.num_classes,
                              self.hparams.latent_channels, self.hparams.pooled_text, self.sampling_defaults())

    def sampling_defaults(self) -> SliceSampling:
        """The inference defaults this module's hparams describe (the artifact's `inference:` block)."""
        hp = self.hparams
        return SliceSampling(steps=int(hp.sample_steps), guidance=float(hp.guidance), prev_noise_t=int(hp.prev_noise_t),
                             noise_corr=float(hp.noise_corr), level_sigma=float(hp.level_sigma))

    # ------------------------------------------------------------------ training
    def diffusion_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        hp = self.hparams
        z0, prev = batch["latent"], batch["prev"]  # (B, C, h, w)
        b = z0.shape[0]
        seg = mask_to_latent_grid(batch["labels"], tuple(z0.shape[-2:]), hp.num_classes).to(z0)
        if self.training and hp.p_prev_drop > 0:
            keep = (torch.rand(b, device=z0.device) >= hp.p_prev_drop).to(z0.dtype)
            prev = prev * keep[:, None, None, None]
        level = torch.randint(-1, hp.prev_noise_max_t + 1, (b,), device=z0.device) if self.training else \
            torch.full((b,), hp.prev_noise_t, device=z0.device)
        prev_aug = augment_prev(self.scheduler, prev, level)
        drop = torch.rand(b, device=z0.device) < (hp.p_uncond if self.training else 0.0)
        text, = trim_text_inputs(self.encode_text(batch["text"], drop))
        t = torch.randint(0, self.scheduler.num_train_timesteps, (b,), device=z0.device)
        noise = torch.randn_like(z0)
        xt = self.scheduler.add_noise(z0, noise, t)
        out = self.denoiser(xt, t, prev_aug, seg, batch["position"], level, **text)
        return F.mse_loss(out.float(), self.scheduler.training_target(z0, noise, t).float())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch)
        check_finite(loss, self.global_step)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update (before any checkpoint of this step is saved)."""
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            decay = ema_decay(int(self.ema_updates), self.hparams.ema_decay)
            ema_update(self.ema["denoiser"], self.denoiser, decay)
            ema_update(self.ema["text"], self.text, decay)
            self.ema_updates += 1

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.random.fork_rng(devices=[])  # fixed noise: comparable val losses
        with gen:
            torch.manual_seed(1234 + batch_idx)
            loss = self.diffusion_loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["text"]))

    def on_train_end(self) -> None:
        if self.hparams.export_path and self.trainer.is_global_zero:
            export_ldm(self, self.hparams.export_path)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = [{"params": list(self.denoiser.parameters()), "lr": hp.lr}]
        text_params = [p for p in self.text.parameters() if p.requires_grad]
        if text_params:
            groups.append({"params": text_params, "lr": hp.text_lr})
        opt = torch.optim.AdamW(groups, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, hp.warmup_steps, hp.decay_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def upgrade_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """In place: checkpoints written before the module wrapped a SliceGenerator kept the denoiser
    and text encoder at the top level (`denoiser.*`, `text.*`); now they are `model.*`."""
    for k in [k for k in state if k.startswith(("denoiser.", "text."))]:
        state["model." + k] = state.pop(k)
    return state


# ---------------------------------------------------------------------- artifacts
def export_ldm(module: SliceLDMModule, path: str | Path) -> Path:
    """Write `path` (UNet + LDM metadata), `path`_text (the text encoder) and, where the module has
    one, `path`_classemb (the text-painted class map) as components."""
    stem = artifact_stem(path)
    text_stem = stem.with_name(stem.name + "_text")
    ema = module.ema is not None
    text, denoiser = (module.ema["text"], module.ema["denoiser"]) if ema else (module.text, module.denoiser)
    save_component(text, text_stem, init_args=module.text.init_args,
                   metadata={"role": "stage2 text encoder", "weights": "ema" if ema else "raw"})
    hp = module.hparams
    meta = {
        "role": "stage2 slice LDM", "text_encoder": text_stem.name,
        "vae": Path(hp.vae_path).name if hp.vae_path else None,
        "num_classes": hp.num_classes, "latent_channels": hp.latent_channels,
        "scheduler": module.scheduler_args, "prev_noise_max_t": hp.prev_noise_max_t,
        "pooled_text": bool(hp.pooled_text), "weights": "ema" if ema else "raw",
        "class_embed": None, "class_embed_dim": int(hp.class_embed_dim),
        "input_layout": "x_t | prev_aug | mask fractions" + (" | text-painted class map" if hp.class_embed_dim else "")
                        + "; cond_vector = [position, (level+1)/T"
                        + (", pooled text]" if hp.pooled_text else "]"),
        "trained_steps": int(module.global_step) if module._trainer is not None
        else getattr(module, "trained_steps", None),
        "init_from": hp.get("init_from"), "init_trained_steps": module.init_trained_steps,
    }
    inference = module.sampling_defaults()
    if denoiser.class_embed is not None:
        class_stem = stem.with_name(stem.name + "_classemb")
        save_component(denoiser.class_embed, class_stem, init_args=module.class_embed_args,
                       metadata={"role": "stage2 text-painted class map", "weights": meta["weights"]})
        meta["class_embed"] = class_stem.name
    save_component(denoiser.unet, stem, init_args=module.unet_args, metadata=meta, inference=inference.to_dict())
    log.info("exported slice LDM to %s (+ %s%s)", stem, text_stem,
             f", {meta['class_embed']}" if meta["class_embed"] else "")
    return stem

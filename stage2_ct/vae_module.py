"""VAEModule: trains shared.vae.SliceAutoencoder on CT slices (DESIGN.md section 7).

Loss (model space, HU [-1000, 1000] -> [-1, 1]):
    L1(x_rec, x) + soft_weight * L1 on soft-tissue pixels (-150..250 HU of the target)
    + kl_weight * KL(q(z|x) || N(0, I)) [+ adv_weight * patch-GAN generator loss]
The soft-tissue term keeps organ contrast (tens of HU = hundredths in model space) while the
plain L1 keeps bone and air. The optional adversarial loss uses MONAI's PatchDiscriminator
(off in the phantom config). Manual optimisation, so the discriminator can take its own step.

At the end of training the latent scale factor 1 / std(mu) is computed over a fixed set of
training slices on every rank, then rank 0's value is broadcast (identical on all ranks), stored
in the VAE's `latent_scale` buffer and exported with the artifact (`export_path`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from shared.data.transforms import model_to_hu
from shared.io.artifact import save_component
from shared.vae.autoencoder import SliceAutoencoder, kl_divergence
from stage2_ct.common import SOFT_TISSUE_HU, check_finite, hu_errors, warmup_cosine

log = logging.getLogger(__name__)


class VAEModule(L.LightningModule):
    """Args: vae (SliceAutoencoder init args), loss weights (mse_weight: an extra MSE term that
    pulls the rare large errors, e.g. bone), optimiser settings, export_path (component artifact
    written at the end of fit, None = none), scale_slices (how many training slices estimate the
    latent scale factor), init_from (a VAE artifact loaded in `setup`; the export records it and its
    trained_steps as init_from / init_trained_steps), freeze_encoder (fine-tune
    the decoder only: latents, and so the latent scale factor and an LDM trained on them, stay
    valid), channels_last (train in channels-last memory format: 1.28x faster steps in fp32 on 2
    Intel Xeon threads, bench/train_step.py)."""

    def __init__(
        self,
        vae: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        decay_steps: int | None = None,
        soft_weight: float = 4.0,
        kl_weight: float = 1e-6,
        adv_weight: float = 0.0,
        adv_start_step: int = 0,
        grad_clip: float = 1.0,
        export_path: str | None = None,
        scale_slices: int = 512,
        mse_weight: float = 0.0,
        init_from: str | None = None,
        freeze_encoder: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.vae_args = dict(vae or {})
        self.vae = SliceAutoencoder(**self.vae_args)
        self.disc = None
        if adv_weight > 0:
            from monai.networks.nets import PatchDiscriminator

            self.disc = PatchDiscriminator(spatial_dims=2, num_layers_d=3, channels=32,
                                           in_channels=1, out_channels=1)
        self._val: dict[str, torch.Tensor] = {}
        self.init_trained_steps: int | None = None  # trained_steps of init_from, recorded on export
        if freeze_encoder:
            self.vae.encoder.requires_grad_(False)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from:
            from shared.io.artifact import load_component

            init = load_component(self.hparams.init_from)
            self.init_trained_steps = init.artifact_metadata.get("trained_steps")
            try:
                self.vae.load_state_dict(init.state_dict())
            except RuntimeError as err:  # another architecture: size mismatches / missing keys
                raise ValueError(f"model.init_from {self.hparams.init_from}: does not fit this VAE "
                                 f"(model.vae: latent_channels, channels, num_res_blocks): {err}") from err
            log.info("VAE initialised from %s", self.hparams.init_from)

    def on_fit_start(self) -> None:
        if self.hparams.channels_last:
            self.vae.to(memory_format=torch.channels_last)

    def _image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 1, H, W) model space, in the training memory format."""
        x = batch["image"]
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    # ------------------------------------------------------------------ loss
    def reconstruction_loss(self, x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lo, hi = (v / 1000.0 for v in SOFT_TISSUE_HU)  # HU -> model space (centre 0)
        err = (x_rec.float() - x).abs()
        soft = ((x >= lo) & (x <= hi)).float()
        loss = err.mean() + self.hparams.soft_weight * (err * soft).sum() / soft.sum().clamp(min=1)
        return loss + self.hparams.mse_weight * err.pow(2).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        opts = self.optimizers()
        opt_g, opt_d = (opts if isinstance(opts, list) else (opts, None))
        x = self._image(batch)  # (B, 1, H, W) model space
        x_rec, mu, logvar = self.vae(x)
        rec = self.reconstruction_loss(x_rec, x)
        kl = kl_divergence(mu.float(), logvar.float())
        loss = rec + hp.kl_weight * kl
        use_adv = self.disc is not None and self.global_step >= hp.adv_start_step
        if use_adv:
            logits = self.disc(x_rec)[-1]
            g_adv = F.softplus(-logits.float()).mean()
            loss = loss + hp.adv_weight * g_adv
            self.log("train/adv_g", g_adv)
        check_finite(loss, self.global_step)
        self._lr_step(opt_g)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_gradients(opt_g, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
        opt_g.step()
        if use_adv and opt_d is not None:
            real, fake = self.disc(x)[-1].float(), self.disc(x_rec.detach())[-1].float()
            d_loss = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
            check_finite(d_loss, self.global_step, "train/adv_d")
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            self.log("train/adv_d", d_loss)
        self.log_dict({"train/loss": loss, "train/rec": rec, "train/kl": kl}, prog_bar=True)
        return loss

    def _lr_step(self, opt: torch.optim.Optimizer) -> None:
        hp = self.hparams
        factor = warmup_cosine(self.global_step, hp.warmup_steps, hp.decay_steps)
        for group in opt.param_groups:
            group["lr"] = hp.lr * factor
        self.log("train/lr", hp.lr * factor)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x = self._image(batch)
        mu, _ = self.vae.encode(x)
        x_rec = self.vae.decode(mu).clamp(-1, 1)
        for k, v in hu_errors(x_rec, x).items():
            self._val[k] = self._val.get(k, 0) + v.double()

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        v = {k: self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum") for k, t in self._val.items()}
        for name in ("body", "soft", "all"):
            rmse = (v[f"{name}_se"] / v[f"{name}_n"].clamp(min=1)).sqrt()
            self.log(f"val/rmse_{name}_hu", rmse.float(), sync_dist=False, prog_bar=name != "all")

    # ------------------------------------------------------------------ end of fit
    @torch.no_grad()
    def compute_latent_scale(self) -> float:
        """1 / std of posterior means over fixed training slices; rank 0's value on every rank."""
        x = self.trainer.datamodule.scale_slices(self.hparams.scale_slices).to(self.device)
        mus = [self.vae.encode(x[s : s + 64])[0].float() for s in range(0, len(x), 64)]
        scale = torch.tensor(1.0 / float(torch.cat(mus).std()), device=self.device)
        scale = self.trainer.strategy.broadcast(scale, src=0)
        return float(scale)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["init_trained_steps"] = self.init_trained_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a resumed run keeps the lineage of its start: init_from may since hold this run's own export
        if "init_trained_steps" in checkpoint:
            self.init_trained_steps = checkpoint["init_trained_steps"]

    def on_train_end(self) -> None:
        # a frozen encoder keeps its latents, so the scale factor it was given stays
        scale = float(self.vae.latent_scale) if self.hparams.freeze_encoder else self.compute_latent_scale()
        self.vae.set_latent_scale(scale)
        log.info("latent scale factor %.5f (rank %d)", scale, self.global_rank)
        if self.hparams.export_path and self.trainer.is_global_zero:
            export_vae(self.vae, self.vae_args, self.hparams.export_path,
                       extra={"trained_steps": int(self.global_step), "init_from": self.hparams.init_from,
                              "init_trained_steps": self.init_trained_steps})

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.vae.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if self.disc is None:
            return opt
        return [opt, torch.optim.AdamW(self.disc.parameters(), lr=hp.lr, betas=(0.5, 0.9))]


def export_vae(vae: SliceAutoencoder, init_args: dict[str, Any], path: str,
               extra: dict[str, Any] | None = None) -> None:
    """Write the VAE component artifact with its latent scale factor and model-space mapping."""
    args = {**init_args, "latent_scale": float(vae.latent_scale)}
    meta = {"latent_scale": float(vae.latent_scale), "factor": vae.factor,
            "latent_channels": vae.latent_channels, "hu_range": [-1000.0, 1000.0],
            "model_space": "hu_to_model: clip to [-1000, 1000] HU, map linearly to [-1, 1]",
            **(extra or {})}
    save_component(vae, path, init_args=args, metadata=meta)
    log.info("exported VAE to %s (latent scale %.5f)", path, float(vae.latent_scale))


def load_vae(path: str, map_location: str | torch.device = "cpu") -> SliceAutoencoder:
    """The VAE artifact, frozen (eval, no grad), in channels-last memory format (fp32 decoding of an
    80-slice volume on 2 CPU threads: 4.1 -> 2.9 s; the HU differ by ~1e-3)."""
    from shared.io.artifact import load_component

    vae = load_component(path, map_location=map_location)
    if not isinstance(vae, SliceAutoencoder):
        raise TypeError(f"{path}: expected a SliceAutoencoder artifact, got {type(vae).__name__}")
    return vae.to(memory_format=torch.channels_last).eval().requires_grad_(False)


__all__ = ["VAEModule", "export_vae", "load_vae", "model_to_hu"]

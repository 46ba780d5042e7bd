"""`SliceGenerator`: the stage-2 inference component (denoiser + class map, text encoder, VAE,
scheduler) that turns label volumes and summaries into CT volumes in HU, slice after slice along z.

For every slice k, all B volumes and both classifier-free-guidance branches go through ONE UNet
forward per sampling step (batch 2B, shared.diffusion.sample_loop with batch_cfg). Slice k is
conditioned on its mask slice, its position, the text and the noise-augmented latent of the
generated slice k-1 (zeros for k = 0). Latents are decoded by the VAE in slice batches at the end.
Autocast in bf16 where `autocast` is on (by default where bf16 is fast: shared.runtime.bf16_is_fast):
the UNet, and the VAE decoder except its output conv (fp32 output; 0.4 HU RMS from an fp32 decode
on soft tissue, half the decode time). Where `level_sigma` > 0 the decoded solid organs are then
steadied along z (stage2_ct.harmonize).

`load_slice_ldm(path)` builds it from the LDM artifact, its text-encoder and class-map components
and the VAE artifact; its sampling defaults are the artifact's `inference:` block (`SliceSampling`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.diffusion import GaussianScheduler, Generators, sample_loop
from shared.io.artifact import InferenceDefaults, artifact_stem, load_component, read_component_spec
from shared.nets import UNet
from shared.runtime import bf16_is_fast
from shared.text.encoder import TextEncoder
from stage2_ct.conditioning import (
    ClassTextEmbedding,
    SliceDenoiser,
    augment_prev,
    mask_to_latent_grid,
    null_text_inputs,
    text_inputs,
    trim_text_inputs,
)
from stage2_ct.harmonize import harmonize_levels, organ_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceSampling(InferenceDefaults):
    """`SliceGenerator.generate` defaults: the LDM artifact's `inference:` block.

    steps: DDIM steps per slice; guidance: CFG weight on the text (1 = conditional only);
    prev_noise_t: forward-process level the previous slice's latent is noised to before it
    conditions slice k (0-indexed timestep; -1 = clean); noise_corr: rho in [0, 1), the initial
    noise of slice k is rho x_T(k-1) + sqrt(1 - rho^2) fresh noise (0 = independent slices);
    level_sigma: organ level harmonisation along z after decoding (Gaussian width in slices, 0 = off).
    """

    steps: int = 10
    guidance: float = 1.05
    prev_noise_t: int = 250
    noise_corr: float = 0.15
    level_sigma: float = 3.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.noise_corr < 1.0:
            raise ValueError(f"noise_corr must be in [0, 1), got {self.noise_corr}")
        if self.level_sigma < 0:
            raise ValueError(f"level_sigma must be >= 0 slices (0 = off), got {self.level_sigma}")


class SliceGenerator(nn.Module):
    """Label volumes + summaries -> CT volumes (HU). Frozen, inference only.

    Args:
        denoiser: the SliceDenoiser (UNet + optional text-painted class map).
        text: the text encoder whose tokens (and pooled embedding, `pooled_text`) condition it.
        vae: the SliceAutoencoder whose latents the denoiser was trained on (None while training
            the denoiser: set it with `attach_vae` before generating).
        scheduler: the GaussianScheduler it was trained with (DDIM sampling).
        num_classes / latent_channels: K mask channels, C latent channels.
        sampling: the defaults of `generate`.
    """

    def __init__(self, denoiser: SliceDenoiser, text: TextEncoder, vae: nn.Module | None,
                 scheduler: GaussianScheduler, num_classes: int, latent_channels: int, pooled_text: bool,
                 sampling: SliceSampling | None = None) -> None:
        super().__init__()
        self.denoiser, self.text, self.scheduler = denoiser, text, scheduler
        self.num_classes, self.latent_channels, self.pooled_text = num_classes, latent_channels, pooled_text
        self.sampling = sampling or SliceSampling()
        self.vae: nn.Module | None = None
        if vae is not None:
            self.attach_vae(vae)

    def attach_vae(self, vae: nn.Module) -> None:
        """Use `vae` to decode (its latent channels must be the denoiser's)."""
        if vae.latent_channels != self.latent_channels:
            raise ValueError(f"the denoiser has {self.latent_channels} latent channels, the VAE {vae.latent_channels}")
        self.vae = vae

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @torch.no_grad()
    def generate(
        self,
        masks: torch.Tensor,
        summaries: Sequence[str],
        generator: Generators = None,
        autocast: bool | None = None,
        decode_batch: int = 64,
        batch_cfg: bool = True,
        **overrides: Any,
    ) -> torch.Tensor:
        """CT volumes in HU from label volumes.

        Args:
            masks: (B, X, Y, Z) integer labels on the CT grid (RAS, axial slice k = [..., k]).
            summaries: B strings (Findings.summary()).
            generator: drives every random draw (initial noise, previous-slice augmentation); one
                generator per volume makes each volume independent of the batch it runs in.
            autocast: bf16 autocast for the UNet and the VAE decoder body (None = where bf16 is
                fast on this device).
            decode_batch: slices per VAE decoder call.
            batch_cfg: both guidance branches in one forward (False: two passes, for benchmarks).
            overrides: `SliceSampling` fields (steps, guidance, prev_noise_t, noise_corr,
                level_sigma); None keeps the default.

        Returns:
            (B, X, Y, Z) float32 HU in [-1000, 1000] on the masks' device.
        """
        cfg = self.sampling.override(**overrides)
        if self.vae is None:
            raise RuntimeError("no VAE attached (SliceGenerator.attach_vae)")
        if masks.ndim != 4:
            raise ValueError(f"masks must be (B, X, Y, Z), got {tuple(masks.shape)}")
        b, nx, ny, nz = masks.shape
        if len(summaries) != b:
            raise ValueError(f"{len(summaries)} summaries for {b} volumes")
        device, out_device = self.device, masks.device
        autocast = bf16_is_fast(device) if autocast is None else autocast
        masks = masks.to(device).long()
        f = self.vae.factor
        if nx % f or ny % f:
            raise ValueError(f"slice size {(nx, ny)} is not a multiple of the VAE factor {f}")
        hw, c, scheduler = (nx // f, ny // f), self.latent_channels, self.scheduler
        scheduler.set_timesteps(cfg.steps)

        texts = [text_inputs(self.text, list(summaries), self.pooled_text)]
        if cfg.guidance != 1.0:
            texts.append(null_text_inputs(self.text, b, self.pooled_text))
        texts = trim_text_inputs(*texts)  # padding cut once: exact, fewer keys per step
        cond, uncond = texts[0], (texts[1] if len(texts) > 1 else None)
        prev_level = torch.full((b,), cfg.prev_noise_t, device=device, dtype=torch.long)
        latents = torch.empty(b, nz, c, *hw, device=device)  # (B, Z, C, h, w)
        prev = torch.zeros(b, c, *hw, device=device)
        x_T = None  # the previous slice's initial noise (noise_corr)
        rho = cfg.noise_corr
        for k in range(nz):
            seg = mask_to_latent_grid(masks[..., k], hw, self.num_classes)  # (B, K, h, w)
            prev_aug = augment_prev(scheduler, prev, prev_level, generator)
            position = torch.full((b, 1), k / max(1, nz - 1), device=device)
            extra = {"prev": prev_aug, "seg": seg, "position": position, "level": prev_level}
            fresh = scheduler.init_noise((b, c, *hw), generator=generator, device=device)
            x_T = fresh if x_T is None else rho * x_T + (1.0 - rho**2) ** 0.5 * fresh
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                z, _ = sample_loop(
                    self.denoiser, scheduler, x_T, generator=generator, guidance=cfg.guidance,
                    cond={**cond, **extra}, uncond=None if uncond is None else {**uncond, **extra},
                    batch_cfg=batch_cfg,
                )
            latents[:, k] = z.float()
            prev = z.float()
        flat = latents.reshape(b * nz, c, *hw)
        out = [self.vae.decode_hu(flat[s : s + decode_batch], bf16=autocast).float()
               for s in range(0, len(flat), decode_batch)]
        hu = torch.cat(out).reshape(b, nz, nx, ny).permute(0, 2, 3, 1)  # (B, X, Y, Z)
        if cfg.level_sigma > 0:
            hu = harmonize_levels(hu, masks, organ_ids(self.num_classes), cfg.level_sigma)
        return hu.contiguous().to(out_device)


# ---------------------------------------------------------------------- artifacts
_LEGACY_INFERENCE = {"sample_steps": "steps", "guidance": "guidance", "aug_t": "prev_noise_t",
                     "noise_corr": "noise_corr", "level_sigma": "level_sigma"}


def slice_sampling_of(spec: dict[str, Any], where: str) -> SliceSampling:
    """The `inference:` block of an LDM artifact spec (artifacts written before the block existed
    kept these values in their metadata under older names)."""
    block = spec["inference"] or {new: spec["metadata"][old] for old, new in _LEGACY_INFERENCE.items()
                                  if old in spec["metadata"]}
    return SliceSampling.from_block(block, f"{where}: inference")


def load_ldm_weights(denoiser: SliceDenoiser, text: TextEncoder, path: str | Path,
                     map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an LDM artifact's UNet, class map (if any) and text encoder weights into `denoiser` and
    `text` (strict: the architectures must match); returns the metadata."""
    stem = artifact_stem(path)
    meta = read_component_spec(stem)["metadata"]
    denoiser.unet.load_state_dict(load_component(stem, map_location=map_location).state_dict())
    if meta.get("class_embed"):
        if denoiser.class_embed is None:
            raise KeyError(f"{stem} has a class map ({meta['class_embed']}) but class_embed_dim is 0")
        denoiser.class_embed.load_state_dict(
            load_component(stem.with_name(meta["class_embed"]), map_location=map_location).state_dict())
    text.load_state_dict(load_component(stem.with_name(meta["text_encoder"]), map_location=map_location).state_dict())
    return meta


def load_slice_ldm(path: str | Path, vae_path: str | Path | None = None,
                   map_location: str | torch.device = "cpu") -> SliceGenerator:
    """The SliceGenerator of an LDM artifact (eval, frozen, denoiser in channels-last memory
    format), with its text encoder and class map (components next to it) and the VAE artifact
    (`vae_path`, default: the one named in the metadata, next to the LDM artifact)."""
    from stage2_ct.vae_module import load_vae

    stem = artifact_stem(path)
    spec = read_component_spec(stem)
    meta = spec["metadata"]
    vae_path = vae_path or (stem.parent / meta["vae"] if meta.get("vae") else None)
    if vae_path is None:
        raise ValueError(f"{stem}.yaml names no VAE: pass vae_path")
    text_spec = read_component_spec(stem.with_name(meta["text_encoder"]))
    text = TextEncoder(**{**text_spec["init_args"], "frozen": True})
    unet = UNet(**spec["init_args"])
    class_embed = None
    if int(meta.get("class_embed_dim", 0)) > 0:
        class_embed = ClassTextEmbedding(text.embed_dim, meta["num_classes"], int(meta["class_embed_dim"]))
    scheduler = GaussianScheduler(**meta["scheduler"])
    denoiser = SliceDenoiser(unet, scheduler.num_train_timesteps, class_embed)
    load_ldm_weights(denoiser, text, stem, map_location)
    # channels-last convolutions: 1.4x faster UNet forwards on CPU in bf16 (oneDNN), same weights
    denoiser.to(memory_format=torch.channels_last)
    generator = SliceGenerator(
        denoiser, text, load_vae(str(vae_path), map_location=map_location), scheduler,
        num_classes=int(meta["num_classes"]), latent_channels=int(meta["latent_channels"]),
        pooled_text=bool(meta.get("pooled_text", False)), sampling=slice_sampling_of(spec, str(stem) + ".yaml"))
    generator.artifact_metadata = dict(meta)
    return generator.to(map_location).eval().requires_grad_(False)

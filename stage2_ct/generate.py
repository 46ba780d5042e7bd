"""`generate_volume`: CT volumes (HU) from label volumes and summaries, slice after slice along z.

For every slice k, all B volumes and both classifier-free-guidance branches go through ONE UNet
forward per sampling step (batch 2B, shared.diffusion.sample_loop with batch_cfg). Slice k is
conditioned on its mask slice, its position, the text and the noise-augmented latent of the
generated slice k-1 (zeros for k = 0). Latents are decoded by the VAE in slice batches at the end.
Autocast in bf16 where `autocast` is on (by default where bf16 is fast: shared.runtime.bf16_is_fast):
the UNet, and the VAE decoder except its output conv (fp32 output; 0.4 HU RMS from an fp32 decode on soft tissue, half the decode time).
Where `level_sigma` > 0 the decoded solid organs are then steadied along z (stage2_ct.harmonize).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from shared.diffusion import sample_loop
from shared.runtime import bf16_is_fast
from stage2_ct.conditioning import augment_prev, mask_to_latent_grid, trim_text_inputs
from stage2_ct.harmonize import harmonize_levels, organ_ids

log = logging.getLogger(__name__)


@torch.no_grad()
def sampling_settings(hp: Any, steps: int | None = None, guidance: float | None = None,
                      aug_t: int | None = None, noise_corr: float | None = None,
                      level_sigma: float | None = None) -> dict[str, Any]:
    """The settings a sampling call uses: each value given, else the module's (`hparams`
    sample_steps / guidance / aug_t / noise_corr / level_sigma), else 20 steps, guidance 1,
    independent noise, no level harmonisation."""
    return {"steps": int(hp.get("sample_steps", 20) if steps is None else steps),
            "guidance": float(hp.get("guidance", 1.0) if guidance is None else guidance),
            "aug_t": int(hp.aug_t if aug_t is None else aug_t),
            "noise_corr": float(hp.get("noise_corr", 0.0) if noise_corr is None else noise_corr),
            "level_sigma": float(hp.get("level_sigma", 0.0) if level_sigma is None else level_sigma)}


def volume_levels(module: torch.nn.Module, summaries: Sequence[str], levels: torch.Tensor | str,
                  generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The (B, K) per-volume class levels `generate_volume` paints (None for a module without
    `organ_levels`): given, or drawn from the module's level bank ("bank" / "mean")."""
    if not module.hparams.get("organ_levels"):
        return None
    device = next(module.denoiser.parameters()).device
    if isinstance(levels, str):
        if module.level_bank is None:
            raise ValueError("the module paints per-volume levels but has no level bank: pass levels (B, K)")
        levels = module.level_bank.draw(list(summaries), generator, mode=levels)
    shape = (len(summaries), module.hparams.num_classes)
    if tuple(levels.shape) != shape:
        raise ValueError(f"levels must be {shape} (volumes, classes), got {tuple(levels.shape)}")
    return levels.to(device).float()


def generate_volume(
    module: torch.nn.Module,
    vae: torch.nn.Module,
    masks: torch.Tensor,
    summaries: Sequence[str],
    generator: torch.Generator | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    autocast: bool | None = None,
    aug_t: int | None = None,
    decode_batch: int = 64,
    batch_cfg: bool = True,
    noise_corr: float | None = None,
    levels: torch.Tensor | str = "bank",
    level_sigma: float | None = None,
) -> torch.Tensor:
    """CT volumes in HU from label volumes.

    Args:
        module: a SliceLDMModule (or anything with `denoiser`, `scheduler`, `encode_text`,
            `null_text` and `hparams.num_classes / latent_channels / aug_t`).
        vae: the SliceAutoencoder whose latents the module was trained on.
        masks: (B, X, Y, Z) integer labels on the CT grid (RAS, axial slice k = [..., k]).
        summaries: B strings (Findings.summary()).
        generator: drives every random draw (initial noise, previous-slice augmentation).
        steps: sampling steps of the module's scheduler (DDIM by default); None = the module's
            `sample_steps` (20 where it has none).
        guidance: classifier-free guidance weight on the text (1 = conditional only); None = the
            module's `guidance` (1 where it has none).
        autocast: bf16 autocast for the UNet and the VAE decoder body (its output conv runs in fp32);
            None = where bf16 is fast on the module's device (shared.runtime.bf16_is_fast).
        aug_t: previous-slice augmentation level at inference (None = module's `aug_t`).
        decode_batch: slices per VAE decoder call.
        batch_cfg: both guidance branches in one forward (False: two passes, for benchmarks).
        noise_corr: rho in [0, 1): the initial noise of slice k is rho * x_T(k-1) +
            sqrt(1 - rho^2) * fresh noise (AR(1) along z: still N(0, I) for every slice, so each
            slice is a valid sample; adjacent slices start correlated, 0 = independent).
            None = the module's `noise_corr` (0 where it has none).
        levels: per-volume class levels for a module with `organ_levels` (stage2_ct.levels):
            (B, K) standardised deltas, or "bank" (each volume the levels of a random training
            volume of its report group, drawn with `generator`) or "mean" (typical levels).
            Ignored by modules without them.
        level_sigma: > 0 steadies each solid organ's level along z after decoding
            (`stage2_ct.harmonize.harmonize_levels`, Gaussian width in slices; masks in the labels of
            shared.labels.default_labels); 0 = off; None = the module's `level_sigma` (0 where it has none).

    Returns:
        (B, X, Y, Z) float32 HU in [-1000, 1000] on the masks' device.
    """
    hp = module.hparams
    settings = sampling_settings(hp, steps, guidance, aug_t, noise_corr, level_sigma)
    steps, guidance, noise_corr = settings["steps"], settings["guidance"], settings["noise_corr"]
    if not 0.0 <= noise_corr < 1.0:
        raise ValueError(f"noise_corr must be in [0, 1), got {noise_corr}")
    if settings["level_sigma"] < 0:
        raise ValueError(f"level_sigma must be >= 0 slices (0 = off), got {settings['level_sigma']}")
    if masks.ndim != 4:
        raise ValueError(f"masks must be (B, X, Y, Z), got {tuple(masks.shape)}")
    b, nx, ny, nz = masks.shape
    if len(summaries) != b:
        raise ValueError(f"{len(summaries)} summaries for {b} volumes")
    device, out_device = next(module.denoiser.parameters()).device, masks.device
    autocast = bf16_is_fast(device) if autocast is None else autocast
    masks = masks.to(device).long()
    f = vae.factor
    if nx % f or ny % f:
        raise ValueError(f"slice size {(nx, ny)} is not a multiple of the VAE factor {f}")
    hw = (nx // f, ny // f)
    c = hp.latent_channels
    level = settings["aug_t"]
    scheduler = module.scheduler
    scheduler.set_timesteps(steps)

    texts = [module.encode_text(list(summaries))]  # context, context_mask, pooled
    if guidance != 1.0:
        texts.append(module.null_text(b))
    texts = trim_text_inputs(*texts)  # padding cut once: exact, fewer keys per step
    cond, uncond = texts[0], (texts[1] if len(texts) > 1 else None)
    aug_levels = torch.full((b,), level, device=device, dtype=torch.long)
    class_levels = volume_levels(module, summaries, levels, generator)
    latents = torch.empty(b, nz, c, *hw, device=device)  # (B, Z, C, h, w)
    prev = torch.zeros(b, c, *hw, device=device)
    x_T = None  # the previous slice's initial noise (noise_corr)
    for k in range(nz):
        seg = mask_to_latent_grid(masks[..., k], hw, hp.num_classes)  # (B, K, h, w)
        prev_aug = augment_prev(scheduler, prev, aug_levels, generator)
        position = torch.full((b, 1), k / max(1, nz - 1), device=device)
        extra = {"prev": prev_aug, "seg": seg, "position": position, "level": aug_levels, "levels": class_levels}
        fresh = scheduler.init_noise((b, c, *hw), generator=generator, device=device)
        x_T = fresh if x_T is None else noise_corr * x_T + (1.0 - noise_corr**2) ** 0.5 * fresh
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            z, _ = sample_loop(
                module.denoiser, scheduler, x_T, generator=generator, guidance=guidance,
                cond={**cond, **extra}, uncond=None if uncond is None else {**uncond, **extra},
                batch_cfg=batch_cfg,
            )
        latents[:, k] = z.float()
        prev = z.float()
    flat = latents.reshape(b * nz, c, *hw)
    out = []
    for s in range(0, len(flat), decode_batch):
        out.append(vae.decode_hu(flat[s : s + decode_batch], bf16=autocast).float())
    hu = torch.cat(out).reshape(b, nz, nx, ny).permute(0, 2, 3, 1)  # (B, X, Y, Z)
    if settings["level_sigma"] > 0:
        hu = harmonize_levels(hu, masks, organ_ids(hp.num_classes), settings["level_sigma"])
    return hu.contiguous().to(out_device)

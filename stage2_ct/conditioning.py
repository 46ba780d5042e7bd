"""How the slice LDM sees its conditions (shared by training, generation and the loaders).

Network input for slice k (channels):   [ x_t (C) | prev_aug (C) | mask one-hot at latent grid (K)
                                          (| text-painted class map (d) where `class_embed_dim` d > 0) ]
cond_vector (B, 2 [+ E]):               [ slice position k / (Z - 1), prev augmentation level
                                          (, pooled text embedding where `pooled_text`) ]
context (B, L, D) + mask (B, L):        text tokens of Findings.summary() (cross-attention)

Text-painted class map (`ClassTextEmbedding`): the pooled text embedding (B, E) is mapped to one
d-vector per class (B, K, d) and painted onto the mask fractions, map = sum_k seg_k * v_k(text)
(B, d, h, w): what each organ should look like under this report (contrast phase, fatty liver) as
a spatial input at the organ's own pixels; optionally plus each class's per-volume level
(stage2_ct.levels), the same for every slice of a volume. Without it the network must combine a global text
vector with the mask itself, and it learned to copy the previous slice's organ levels instead (the
same mask as "fatty" and "normal" liver: -3 HU apart, the phantom -36 HU).

Previous-slice noise augmentation (Ho et al. 2022, cascaded diffusion "conditioning
augmentation"): the clean latent of slice k-1 is noised to level s with the forward process,
`prev_aug = sqrt(abar_s) z_{k-1} + sqrt(1 - abar_s) n`, s drawn in [0, aug_max_t] in training and
fixed at inference; s / T is given to the network. The noise drowns the fine, slice-specific
part of z_{k-1} (the CT noise texture), so the network must generate fresh noise for slice k
instead of copying it, and it is robust to its own imperfect previous slices at inference.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.data.downsample import label_fractions
from shared.diffusion import GaussianScheduler, random_draw
from shared.text.encoder import trim_context


def mask_to_latent_grid(labels: torch.Tensor, latent_hw: tuple[int, int], num_classes: int) -> torch.Tensor:
    """Label slices (B, H, W) -> per-class area fractions (B, K, h, w) (the one-hot, area-resized)."""
    return label_fractions(labels, latent_hw, num_classes)


def augment_prev(
    scheduler: GaussianScheduler, prev: torch.Tensor, level: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise the previous latent (B, C, h, w) to integer levels (B,) (level -1 = clean)."""
    noise = random_draw("normal", tuple(prev.shape), generator, prev.device, prev.dtype)
    return scheduler.add_noise(prev, noise, level)


class ClassTextEmbedding(nn.Module):
    """Pooled text (B, E) + mask fractions (B, K, h, w) [+ per-volume class levels (B, K)] ->
    text-painted class map (B, d, h, w).

    With `levels`, class k's vector is v_k(text) + delta_k u_k: the volume's standardised level of
    the class (stage2_ct.levels) along a learned direction u_k, zero at initialisation (a class map
    trained without levels loads into one with them and starts out the same).
    """

    def __init__(self, text_dim: int, num_classes: int, dim: int, levels: bool = False) -> None:
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.proj = nn.Sequential(nn.Linear(text_dim, text_dim), nn.SiLU(), nn.Linear(text_dim, num_classes * dim))
        self.level_dirs = nn.Parameter(torch.zeros(num_classes, dim)) if levels else None

    def forward(self, pooled: torch.Tensor, seg: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        v = self.proj(pooled.to(self.proj[0].weight.dtype)).reshape(-1, self.num_classes, self.dim)  # (B, K, d)
        if self.level_dirs is not None:
            if levels is None:
                raise ValueError("this class map paints per-volume levels: pass levels (B, K)")
            v = v + levels.to(v.dtype)[..., None] * self.level_dirs  # (B, K, d)
        return torch.einsum("bkhw,bkd->bdhw", seg.to(v.dtype), v)


class SliceDenoiser(nn.Module):
    """Wraps the UNet with the input layout above: forward(x_t, t, prev, seg, position, level,
    context, context_mask, pooled, levels) -> model output (B, C, h, w). `class_embed` (optional)
    needs `pooled`, and `levels` (B, K) where it paints per-volume levels."""

    def __init__(self, unet: nn.Module, num_train_timesteps: int,
                 class_embed: ClassTextEmbedding | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.num_train_timesteps = num_train_timesteps
        self.class_embed = class_embed

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, prev: torch.Tensor, seg: torch.Tensor,
        position: torch.Tensor, level: torch.Tensor, context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
        levels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = [x, prev.to(x.dtype), seg.to(x.dtype)]
        if self.class_embed is not None:
            if pooled is None:
                raise ValueError("the text-painted class map needs the pooled text embedding")
            inputs.append(self.class_embed(pooled, seg, levels).to(x.dtype))  # (B, d, h, w)
        inp = torch.cat(inputs, dim=1)  # (B, 2C + K [+ d], h, w)
        parts = [position.reshape(-1, 1).float(), (level.float().reshape(-1, 1) + 1) / self.num_train_timesteps]
        if pooled is not None:
            parts.append(pooled.float())  # (B, E)
        cond = torch.cat(parts, dim=1)  # (B, 2 [+ E])
        return self.unet(inp, t, context=context, context_mask=context_mask, cond_vector=cond)


TEXT_KEYS = ("context", "context_mask", "pooled")


def trim_text_inputs(*texts: dict) -> list[dict]:
    """`shared.text.encoder.trim_context` on denoiser text-input dicts (see encode_text): the
    padding shared by all of them cut once, one common length (the CFG pair concatenates)."""
    trimmed = trim_context(*[tuple(t[k] for k in TEXT_KEYS) for t in texts])
    return [dict(zip(TEXT_KEYS, ctx, strict=True)) for ctx in trimmed]

"""How the slice LDM sees its conditions (shared by training, generation and the loaders).

Network input for slice k (channels):   [ x_t (C) | prev_aug (C) | mask one-hot at latent grid (K)
                                          (| text-painted class map (d) where `class_embed_dim` d > 0) ]
cond_vector (B, 2 [+ E]):               [ slice position k / (Z - 1), prev augmentation level
                                          (, pooled text embedding where `pooled_text`) ]
context (B, L, D) + mask (B, L):        text tokens of Findings.summary() (cross-attention)

Text-painted class map (`ClassTextEmbedding`): the pooled text embedding (B, E) is mapped to one
d-vector per class (B, K, d) and painted onto the mask fractions, map = sum_k seg_k * v_k(text)
(B, d, h, w): what each organ should look like under this report (contrast phase, fatty liver) as
a spatial input at the organ's own pixels. Without it the network must combine a global text
vector with the mask itself, and it learned to copy the previous slice's organ levels instead (the
same mask as "fatty" and "normal" liver: -3 HU apart, the phantom -36 HU).

Previous-slice noise augmentation (Ho et al. 2022, cascaded diffusion "conditioning
augmentation"): the clean latent of slice k-1 is noised to level s with the forward process,
`prev_aug = sqrt(abar_s) z_{k-1} + sqrt(1 - abar_s) n`, s drawn in [0, prev_noise_max_t] in training and
fixed at inference; s / T is given to the network. The noise drowns the fine, slice-specific
part of z_{k-1} (the CT noise texture), so the network must generate fresh noise for slice k
instead of copying it, and it is robust to its own imperfect previous slices at inference.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.data.downsample import label_fractions
from shared.diffusion import GaussianScheduler, Generators, random_draw
from shared.text.encoder import trim_context


def mask_to_latent_grid(labels: torch.Tensor, latent_hw: tuple[int, int], num_classes: int) -> torch.Tensor:
    """Label slices (B, H, W) -> per-class area fractions (B, K, h, w) (the one-hot, area-resized)."""
    return label_fractions(labels, latent_hw, num_classes)


def augment_prev(
    scheduler: GaussianScheduler, prev: torch.Tensor, level: torch.Tensor,
    generator: Generators = None,
) -> torch.Tensor:
    """Noise the previous latent (B, C, h, w) to integer levels (B,) (level -1 = clean)."""
    noise = random_draw("normal", tuple(prev.shape), generator, prev.device, prev.dtype)
    return scheduler.add_noise(prev, noise, level)


class ClassTextEmbedding(nn.Module):
    """Pooled text (B, E) + mask fractions (B, K, h, w) -> text-painted class map (B, d, h, w)."""

    def __init__(self, text_dim: int, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.proj = nn.Sequential(nn.Linear(text_dim, text_dim), nn.SiLU(), nn.Linear(text_dim, num_classes * dim))

    def forward(self, pooled: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        v = self.proj(pooled.to(self.proj[0].weight.dtype)).reshape(-1, self.num_classes, self.dim)  # (B, K, d)
        return torch.einsum("bkhw,bkd->bdhw", seg.to(v.dtype), v)


class SliceDenoiser(nn.Module):
    """Wraps the UNet with the input layout above: forward(x_t, t, prev, seg, position, level,
    context, context_mask, pooled) -> model output (B, C, h, w). `class_embed` (optional) needs `pooled`."""

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
    ) -> torch.Tensor:
        inputs = [x, prev.to(x.dtype), seg.to(x.dtype)]
        if self.class_embed is not None:
            if pooled is None:
                raise ValueError("the text-painted class map needs the pooled text embedding")
            inputs.append(self.class_embed(pooled, seg).to(x.dtype))  # (B, d, h, w)
        inp = torch.cat(inputs, dim=1)  # (B, 2C + K [+ d], h, w)
        parts = [position.reshape(-1, 1).float(), (level.float().reshape(-1, 1) + 1) / self.num_train_timesteps]
        if pooled is not None:
            parts.append(pooled.float())  # (B, E)
        cond = torch.cat(parts, dim=1)  # (B, 2 [+ E])
        return self.unet(inp, t, context=context, context_mask=context_mask, cond_vector=cond)


TEXT_KEYS = ("context", "context_mask", "pooled")


def text_inputs(encoder: nn.Module, texts: list[str], pooled_text: bool,
                drop: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    """Denoiser text inputs: context tokens (B, L, D), context_mask (B, L), pooled (B, E) or None
    (without `pooled_text`); rows where `drop` (B,) is True get the null context (CFG training)."""
    tokens, mask, pooled = encoder.encode(list(texts))
    if drop is not None and drop.any():
        null_tok, null_mask, null_pooled = encoder.null_context(len(texts))
        tokens = torch.where(drop[:, None, None], null_tok.to(tokens.dtype), tokens)
        mask = torch.where(drop[:, None], null_mask, mask)
        pooled = torch.where(drop[:, None], null_pooled.to(pooled.dtype), pooled)
    return {"context": tokens, "context_mask": mask, "pooled": pooled if pooled_text else None}


def null_text_inputs(encoder: nn.Module, batch: int, pooled_text: bool) -> dict[str, torch.Tensor | None]:
    """The null (unconditional) text inputs of `batch` samples."""
    tokens, mask, pooled = encoder.null_context(batch)
    return {"context": tokens, "context_mask": mask, "pooled": pooled if pooled_text else None}


def trim_text_inputs(*texts: dict) -> list[dict]:
    """`shared.text.encoder.trim_context` on denoiser text-input dicts (see encode_text): the
    padding shared by all of them cut once, one common length (the CFG pair concatenates)."""
    trimmed = trim_context(*[tuple(t[k] for k in TEXT_KEYS) for t in texts])
    return [dict(zip(TEXT_KEYS, ctx, strict=True)) for ctx in trimmed]

"""Named UNet configurations (plain keyword args, so they double as artifact `init_args`).

Stages pick one and override what differs (in/out channels, context_dim):
    UNet(**{**UNET_PRESETS["stage1_phantom"], "context_dim": encoder.dim})
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from shared.nets.unet import UNet

__all__ = ["UNET_PRESETS", "build_unet", "build_monai_unet"]

UNET_PRESETS: dict[str, dict[str, Any]] = {
    # Stage 1: 12-class one-hot volume 64 x 64 x 40 -> 12 x0 logits. A 2x2x2 space-to-depth stem
    # (patch_size=2; a linear patch embedding, stem_kernel_size=1) and a 3x3 depth-to-space head:
    # no conv runs at full resolution. Levels at 32x32x20 (32 ch), 16x16x10 (64), 8x8x5 (128);
    # self+cross attention only at 8x8x5 + middle (global receptive field); decoder skips are
    # added, not concatenated (-14% FLOPs). See
    # docs/benchmarks.md for parameters, FLOPs and the comparison with MONAI.
    "stage1_phantom": dict(
        spatial_dims=3, in_channels=12, out_channels=12, channels=[32, 64, 128],
        num_res_blocks=[1, 1, 1], attention_levels=[False, False, True], context_dim=512,
        head_dim=32, norm_groups=8, patch_size=2, stem_kernel_size=1, additive_skips=True,
    ),
    # Stage 2: latent slices 4 x 32 x 32; input = noisy latent (4) + previous latent (4) + mask
    # one-hot (12); slice position (1) through the extra embedding. <= 8M parameters.
    "stage2_phantom": dict(
        spatial_dims=2, in_channels=20, out_channels=4, channels=[64, 128, 128],
        num_res_blocks=2, attention_levels=[False, True, True], context_dim=512,
        head_dim=32, norm_groups=16, extra_embed_dim=1,
    ),
    "tiny3d": dict(
        spatial_dims=3, in_channels=3, out_channels=3, channels=[8, 16],
        num_res_blocks=1, attention_levels=[False, True], context_dim=16, head_dim=8,
        norm_groups=4,
    ),
    "tiny2d": dict(
        spatial_dims=2, in_channels=3, out_channels=3, channels=[8, 16],
        num_res_blocks=1, attention_levels=[False, True], context_dim=16, head_dim=8,
        norm_groups=4, extra_embed_dim=1,
    ),
}


def build_unet(preset: str, **overrides: Any) -> tuple[UNet, dict[str, Any]]:
    """UNet from a preset with overrides; returns (net, init_args) for `save_component`."""
    if preset not in UNET_PRESETS:
        raise KeyError(f"unknown UNet preset {preset!r}; choose from {sorted(UNET_PRESETS)}")
    init_args = {**copy.deepcopy(UNET_PRESETS[preset]), **overrides}
    return UNet(**init_args), init_args


def build_monai_unet(
    spatial_dims: int, in_channels: int, out_channels: int, channels: list[int],
    num_res_blocks: int | list[int], attention_levels: list[bool], context_dim: int | None,
    head_dim: int = 32, norm_groups: int = 8, **_: Any,
) -> torch.nn.Module:
    """MONAI's DiffusionModelUNet of the same widths (optional alternative, and the benchmark
    baseline). UNet-only args (extra_embed_dim, dropout, patch_size, additive_skips,
    stem_kernel_size, mid_attention) are ignored: MONAI's level 0 runs at full resolution and its
    middle block follows the last attention level.

    Its forward is `net(x, timesteps, context=...)`; it has no key padding mask.
    """
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
        channels=tuple(channels), num_res_blocks=num_res_blocks,
        attention_levels=tuple(attention_levels), norm_num_groups=norm_groups,
        num_head_channels=head_dim, with_conditioning=bool(context_dim),
        cross_attention_dim=context_dim or None, include_fc=True,
    )

"""One diffusion UNet for 2D and 3D (`spatial_dims`), built to be cheap on CPU.

Layout (Ronneberger et al. 2015; Ho et al. 2020; Rombach et al. 2022 for cross-attention):
conv_in -> per level [ResBlock x num_res_blocks (+ Transformer if attention_levels[i])]
-> strided-conv downsample -> middle (ResBlock, Transformer, ResBlock) -> mirrored decoder
with one skip concatenation per level and kernel-2 transposed-conv upsampling -> GroupNorm,
SiLU, conv_out. `num_res_blocks` may be per level; 0 blocks at level 0 ("downsample early")
leaves only conv_in, the skip and conv_out at full resolution, which is where CPU time goes.

* Time t (B,) -> sinusoidal features -> MLP -> embedding `emb` (B, E), E = 4 * channels[0]; an
  optional `cond_vector` (B, extra_embed_dim), e.g. slice position, goes through its own MLP and
  is added to `emb`. Each ResBlock applies emb as GroupNorm scale/shift (FiLM).
* Transformer blocks (self-attention + cross-attention to `context` (B, L, context_dim) with a
  key padding mask `context_mask` (B, L) bool, True = real token + feed-forward) only at the
  levels flagged in `attention_levels`; all attention uses F.scaled_dot_product_attention.
* `patch_size` p > 1: a space-to-depth stem (each p^dims block of voxels becomes p^dims * C_in
  channels, lossless) before conv_in, and a depth-to-space head (conv_out predicts
  p^dims * C_out channels per coarse voxel) after it, so no convolution runs at full resolution
  (Shi et al. 2016's pixel shuffle; the "patchify" stem of ViT/DiT in convolutional form).
* `additive_skips`: decoder adds the encoder skip instead of concatenating it (fewer input
  channels for the first decoder conv); default off.
* Inputs whose spatial size is not a multiple of patch_size * 2^(levels-1) are zero-padded at the
  end of each axis and the output is cropped back, so any size works (e.g. 8 x 8 x 5).
* No zero-initialised layers: at step 0 every parameter gets a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "depth_to_space", "space_to_depth", "timestep_embedding"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (B, dim) of (B,) timesteps (Vaswani et al. 2017), float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, *S) -> (B, C * p^d, *S/p): each p^d block of voxels becomes channels (lossless)."""
    if p == 1:
        return x
    b, c, *spatial = x.shape
    d = len(spatial)
    x = x.reshape(b, c, *(n for s in spatial for n in (s // p, p)))  # (B, C, S1/p, p, S2/p, p, ...)
    x = x.permute(0, 1, *range(3, 3 + 2 * d, 2), *range(2, 2 + 2 * d, 2))  # (B, C, p.., S1/p, ..)
    return x.reshape(b, c * p**d, *(s // p for s in spatial))


def depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `space_to_depth`: (B, C * p^d, *S) -> (B, C, *S*p)."""
    if p == 1:
        return x
    b, cp, *spatial = x.shape
    d = len(spatial)
    x = x.reshape(b, cp // p**d, *(p,) * d, *spatial)  # (B, C, p.., S1, S2, ..)
    x = x.permute(0, 1, *(i for k in range(d) for i in (2 + d + k, 2 + k)))  # (B, C, S1, p, S2, p, ..)
    return x.reshape(b, cp // p**d, *(s * p for s in spatial))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-5)


class ResBlock(nn.Module):
    """GN-SiLU-conv, GN * (1 + scale) + shift from emb, SiLU-dropout-conv, + skip (1x1 if needed)."""

    def __init__(self, dims: int, cin: int, cout: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        conv = _CONV[dims]
        self.norm1 = _norm(cin, groups)
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)  # (B, C) each
        shape = scale.shape + (1,) * (h.ndim - 2)
        h = self.norm2(h) * (1 + scale.reshape(shape)) + shift.reshape(shape)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention with SDPA; keys/values from `kv` (self-attention if kv is x)."""

    def __init__(self, dim: int, kv_dim: int, head_dim: int):
        super().__init__()
        self.heads = max(1, dim // head_dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, c = x.shape
        q = self.to_q(x).reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, H, N, d)
        k, v = self.to_kv(kv).reshape(b, kv.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class Transformer(nn.Module):
    """Spatial transformer: tokens = voxels; self-attn, cross-attn to context, feed-forward."""

    def __init__(self, dim: int, context_dim: int | None, head_dim: int, groups: int):
        super().__init__()
        self.norm = _norm(dim, groups)
        self.ln1, self.self_attn = nn.LayerNorm(dim), Attention(dim, dim, head_dim)
        self.cross_attn = Attention(dim, context_dim, head_dim) if context_dim else None
        self.ln2 = nn.LayerNorm(dim) if context_dim else None
        self.ln3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, c, *spatial = x.shape
        h = self.norm(x).movedim(1, -1).reshape(b, -1, c)  # (B, N, C)
        n = self.ln1(h)
        h = h + self.self_attn(n, n)
        if self.cross_attn is not None and context is not None:
            keep = None
            if context_mask is not None:
                has_token = context_mask.any(dim=1)  # (B,) rows with no real token attend to all
                mask = context_mask | ~has_token[:, None]
                keep = has_token.to(h.dtype)[:, None, None]
                h = h + keep * self.cross_attn(self.ln2(h), context, mask)
            else:
                h = h + self.cross_attn(self.ln2(h), context)
        h = h + self.ff(self.ln3(h))
        return x + h.reshape(b, *spatial, c).movedim(-1, 1)


class UNet(nn.Module):
    """Diffusion UNet; see the module docstring.

    Args:
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels / out_channels: C_in (noisy sample + concatenated conditions) / C_out.
        channels: width per level, e.g. [16, 32, 64, 128]; each level halves the resolution.
        num_res_blocks: ResBlocks per level in the encoder and in the decoder (an int or one per
            level; 0 at level 0 keeps full resolution to conv_in / conv_out only: much cheaper).
        attention_levels: one bool per level: transformer blocks there (and in the middle if the
            last is True, unless `mid_attention` says otherwise).
        mid_attention: transformer block between the two middle ResBlocks (None = the last entry
            of attention_levels). [F, F, F] + True keeps only the middle one: at an 8 x 8 grid each
            block is mostly per-op overhead on CPU (stage-2 bench, docs/benchmarks.md).
        context_dim: text token width D for cross-attention (None / 0 = no cross-attention).
        head_dim: channels per attention head.
        norm_groups: GroupNorm groups (gcd with the channel count is used).
        extra_embed_dim: size of the optional `cond_vector` added to the time embedding (0 = off).
        dropout: ResBlock dropout.
        patch_size: space-to-depth stem / depth-to-space head factor per spatial axis (1 = off;
            2 = level 0 runs at half resolution with 2^dims times the input channels).
        additive_skips: add encoder skips in the decoder instead of concatenating them.
        stem_kernel_size: kernel of conv_in (odd). With patch_size 2, 1 makes it the DiT-style
            linear patch embedding: a 3x3 conv on 2^dims * C_in channels is one of the costliest
            of a small net, and the ResBlocks after it mix neighbours anyway. The head (conv_out)
            stays 3x3: a 1x1 head must decode 2^dims * C_out logits from channels[0] features
            of one cell, which measurably loses isolated voxels (tests/unit/test_unet.py).

    forward(x (B, C_in, *S), t (B,) or scalar, context (B, L, D) | None, context_mask (B, L) bool
    | None, cond_vector (B, extra_embed_dim) | None) -> (B, C_out, *S).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 12,
        out_channels: int = 12,
        channels: Sequence[int] = (16, 32, 64, 128),
        num_res_blocks: int | Sequence[int] = 1,
        attention_levels: Sequence[bool] = (False, False, True, True),
        context_dim: int | None = None,
        head_dim: int = 32,
        norm_groups: int = 8,
        extra_embed_dim: int = 0,
        dropout: float = 0.0,
        patch_size: int = 1,
        additive_skips: bool = False,
        stem_kernel_size: int = 3,
        mid_attention: bool | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if len(attention_levels) != len(channels):
            raise ValueError(
                f"attention_levels has {len(attention_levels)} entries for {len(channels)} levels"
            )
        if patch_size < 1 or stem_kernel_size < 1 or stem_kernel_size % 2 == 0:
            raise ValueError(
                f"need patch_size >= 1 and an odd stem_kernel_size, got {patch_size}, {stem_kernel_size}"
            )
        conv = _CONV[spatial_dims]
        self.spatial_dims, self.extra_embed_dim = spatial_dims, extra_embed_dim
        self.context_dim = context_dim or None
        self.patch_size, self.additive_skips = patch_size, additive_skips
        self.multiple = patch_size * 2 ** (len(channels) - 1)
        cells = patch_size**spatial_dims  # voxels per stem cell
        ch0, emb_dim = channels[0], 4 * max(channels[0], 32)
        self.time_mlp = nn.Sequential(nn.Linear(ch0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.extra_mlp = (
            nn.Sequential(nn.Linear(extra_embed_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if extra_embed_dim > 0 else None
        )

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(spatial_dims, cin, cout, emb_dim, norm_groups, dropout)

        def attn(c: int, on: bool) -> nn.Module:
            return Transformer(c, self.context_dim, head_dim, norm_groups) if on else nn.Identity()

        n_blocks = (
            [num_res_blocks] * len(channels) if isinstance(num_res_blocks, int) else list(num_res_blocks)
        )
        if len(n_blocks) != len(channels):
            raise ValueError(f"num_res_blocks has {len(n_blocks)} entries for {len(channels)} levels")
        self.conv_in = conv(in_channels * cells, ch0, stem_kernel_size, padding=stem_kernel_size // 2)
        self.down_blocks, self.down_attn, self.downsamples = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        ch = ch0
        for i, (c, n, use_attn) in enumerate(zip(channels, n_blocks, attention_levels, strict=True)):
            self.down_blocks.append(nn.ModuleList(res(ch if r == 0 else c, c) for r in range(n)))
            self.down_attn.append(nn.ModuleList(attn(c, use_attn) for _ in range(n)))
            ch = c if n > 0 else ch
            last = i == len(channels) - 1
            self.downsamples.append(nn.Identity() if last else conv(ch, channels[i + 1], 3, stride=2, padding=1))
            ch = ch if last else channels[i + 1]
        skip_ch = list(channels)  # level i's skip always has channels[i]
        mid_attn = attention_levels[-1] if mid_attention is None else mid_attention
        self.mid1, self.mid_attn, self.mid2 = res(ch, ch), attn(ch, mid_attn), res(ch, ch)
        self.up_blocks, self.up_attn, self.upsamples = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        transpose = _CONV_T[spatial_dims]
        for i in reversed(range(len(channels))):
            c, n, use_attn = channels[i], n_blocks[i], attention_levels[i]
            ch = ch if additive_skips else ch + skip_ch[i]  # added or concatenated skip
            self.up_blocks.append(nn.ModuleList(res(ch if r == 0 else c, c) for r in range(n)))
            self.up_attn.append(nn.ModuleList(attn(c, use_attn) for _ in range(n)))
            ch = c if n > 0 else ch
            # learned 2x upsampling (kernel 2, stride 2): cheap, every output voxel sees one tap
            self.upsamples.append(transpose(ch, channels[i - 1], 2, stride=2) if i > 0 else nn.Identity())
            ch = channels[i - 1] if i > 0 else ch
        self.norm_out = _norm(ch, norm_groups)
        self.conv_out = conv(ch, out_channels * cells, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        cond_vector: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected x (B, C, {self.spatial_dims} spatial dims), got {tuple(x.shape)}")
        b, spatial = x.shape[0], x.shape[2:]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        emb = self.time_mlp(timestep_embedding(t, self.time_mlp[0].in_features))  # (B, E)
        if self.extra_mlp is not None:
            if cond_vector is None:
                raise ValueError(f"this UNet needs cond_vector (B, {self.extra_embed_dim})")
            emb = emb + self.extra_mlp(cond_vector.float().reshape(b, -1))
        if context is not None and self.context_dim is None:
            raise ValueError("context given but the UNet was built without context_dim")
        if context_mask is not None:
            context_mask = context_mask.bool()

        pad = [(-s) % self.multiple for s in spatial]
        if any(pad):  # F.pad takes (last_lo, last_hi, ..., first_lo, first_hi)
            x = F.pad(x, [p for q in reversed(pad) for p in (0, q)])
        h = self.conv_in(space_to_depth(x, self.patch_size))
        skips = []
        for blocks, attns, down in zip(self.down_blocks, self.down_attn, self.downsamples, strict=True):
            for block, at in zip(blocks, attns, strict=True):
                h = self._attn(at, block(h, emb), context, context_mask)
            skips.append(h)
            h = down(h)
        h = self.mid2(self._attn(self.mid_attn, self.mid1(h, emb), context, context_mask), emb)
        for blocks, attns, up in zip(self.up_blocks, self.up_attn, self.upsamples, strict=True):
            skip = skips.pop()
            h = h + skip if self.additive_skips else torch.cat([h, skip], dim=1)
            for block, at in zip(blocks, attns, strict=True):
                h = self._attn(at, block(h, emb), context, context_mask)
            h = up(h)
        out = depth_to_space(self.conv_out(F.silu(self.norm_out(h))), self.patch_size)
        if any(pad):
            out = out[(..., *(slice(0, s) for s in spatial))]
        return out

    @staticmethod
    def _attn(at: nn.Module, h: torch.Tensor, context, context_mask) -> torch.Tensor:
        return h if isinstance(at, nn.Identity) else at(h, context, context_mask)

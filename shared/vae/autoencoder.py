"""2D KL autoencoder for CT slices (Kingma & Welling 2014; Rombach et al. 2022, sec. 3).

Model space in and out: HU clipped to [-1000, 1000] and mapped to [-1, 1]
(shared.data.transforms.hu_to_model). Downsampling factor f = 2^len(down) (default f = 4:
128^2 -> 4 x 32 x 32 latents; channels with one more entry give f = 8 for 512^2).

Built to be cheap on CPU: one conv at full resolution in the encoder, strided convs, plain
residual blocks (SiLU-conv x 2, no normalisation: statistics of a training crop
would differ from a full slice's) at the coarse levels, kernel-2 transposed convs to
upsample, no attention. The posterior is diagonal Gaussian N(mu, exp(logvar)).

The latent scale factor (1 / std of the posterior means over the training set) lives in the
persistent buffer `latent_scale` and the artifact metadata; `encode_latents` / `decode_latents`
speak scaled latents (what the LDM sees), `encode` / `decode` unscaled ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from shared.data.transforms import hu_to_model, model_to_hu
from shared.diffusion.protocol import random_draw

__all__ = ["SliceAutoencoder", "kl_divergence"]


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


class SliceAutoencoder(nn.Module):
    """KL autoencoder for (B, 1, H, W) slices in model space; H, W multiples of f.

    Args:
        in_channels: image channels (1 for CT).
        latent_channels: latent channels (4).
        channels: width per resolution level; level i works at 1 / 2^i. len - 1 = log2(f).
        num_res_blocks: residual blocks per level (an int or one per level; the full-resolution
            level is usually 0: conv_in / conv_out only, which is where CPU time goes).
        latent_scale: initial latent scale factor (set after training from the data).
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        channels: Sequence[int] = (32, 64, 96),
        num_res_blocks: int | Sequence[int] = (0, 1, 2),
        latent_scale: float = 1.0,
    ) -> None:
        super().__init__()
        n_blocks = [num_res_blocks] * len(channels) if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if len(n_blocks) != len(channels):
            raise ValueError(f"num_res_blocks has {len(n_blocks)} entries for {len(channels)} levels")
        self.latent_channels = latent_channels
        self.factor = 2 ** (len(channels) - 1)
        self.register_buffer("latent_scale", torch.tensor(float(latent_scale)))

        enc: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for i, (c, n) in enumerate(zip(channels, n_blocks, strict=True)):
            enc += [_ResBlock(c, c) for _ in range(n)]
            if i < len(channels) - 1:
                enc.append(nn.Conv2d(c, channels[i + 1], 3, stride=2, padding=1))
        enc += [nn.SiLU(), nn.Conv2d(channels[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        with torch.no_grad():  # start with a narrow posterior (std ~0.1): sampled latents stay informative
            enc[-1].bias[latent_channels:].fill_(-4.0)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, channels[-1], 3, padding=1)]
        for i in reversed(range(len(channels))):
            dec += [_ResBlock(channels[i], channels[i]) for _ in range(max(n_blocks[i], 1 if i else 0))]
            if i > 0:
                dec.append(nn.ConvTranspose2d(channels[i], channels[i - 1], 2, stride=2))
        dec += [nn.Conv2d(channels[0], channels[0], 3, padding=1), nn.SiLU(),
                nn.Conv2d(channels[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ unscaled latents
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, H, W) model space -> (mu, logvar), each (B, C_lat, H/f, W/f)."""
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"slice size {tuple(x.shape[-2:])} is not a multiple of f = {self.factor}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """z (B, C_lat, h, w) unscaled -> (B, 1, h f, w f) model space (not clipped).

        bf16: run every layer but the output conv under bf16 autocast (about 2x faster on CPU);
        the output conv stays fp32, so the result is fp32 with no bf16 rounding of HU.
        """
        if not bf16:
            return self.decoder(z)
        with torch.autocast(z.device.type, dtype=torch.bfloat16):
            h = self.decoder[:-1](z)
        with torch.autocast(z.device.type, enabled=False):
            return self.decoder[-1](h.float())

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction with a posterior sample: (x_rec, mu, logvar)."""
        mu, logvar = self.encode(x)
        eps = random_draw("normal", tuple(mu.shape), generator, mu.device, mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps
        return self.decode(z), mu, logvar

    # ------------------------------------------------------------------ scaled latents (LDM side)
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space slices -> scaled posterior means (what the LDM is trained on)."""
        return self.encode(x)[0] * self.latent_scale.to(x.dtype)

    def decode_latents(self, z: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Scaled latents -> model-space slices clipped to [-1, 1] (bf16: see `decode`)."""
        return self.decode(z / self.latent_scale.to(z.dtype), bf16=bf16).clamp(-1.0, 1.0)

    def encode_hu(self, hu: torch.Tensor) -> torch.Tensor:
        """HU slices (B, 1, H, W) -> scaled latents."""
        return self.encode_latents(hu_to_model(hu.float()))

    def decode_hu(self, z: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Scaled latents -> HU slices (B, 1, H, W) float32 in [-1000, 1000] (bf16: see `decode`)."""
        return model_to_hu(self.decode_latents(z, bf16=bf16).float())

    @torch.no_grad()
    def reconstruct_hu(self, hu: torch.Tensor) -> torch.Tensor:
        """Deterministic round trip (posterior mean) in HU, for evaluation."""
        return model_to_hu(self.decode(self.encode(hu_to_model(hu.float()))[0]).clamp(-1, 1).float())

    def set_latent_scale(self, value: float) -> None:
        self.latent_scale.fill_(float(value))

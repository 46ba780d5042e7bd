"""shared/vae: the 2D KL autoencoder for CT slices (plain torch)."""

from shared.vae.autoencoder import SliceAutoencoder, kl_divergence

__all__ = ["SliceAutoencoder", "kl_divergence"]

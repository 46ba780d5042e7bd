"""shared/diffusion."""

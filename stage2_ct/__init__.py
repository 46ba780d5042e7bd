"""Stage 2: slice-autoregressive latent diffusion for CT, and the VAE training module."""

"""shared/vae."""

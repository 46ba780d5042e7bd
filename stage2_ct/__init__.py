"""Stage 2: CT slice autoencoder training (VAEModule) and the conditional slice latent diffusion
model (SliceLDMModule, generate_volume). Imports only `shared`."""

"""Stage 2: CT slice autoencoder training (VAEModule), the conditional slice latent diffusion
model (SliceLDMModule) and its inference component (SliceGenerator). Imports only `shared`."""

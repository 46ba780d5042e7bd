"""GuideGen shared library: findings, labels, data, io, text, diffusion, nets, vae.

Plain torch/MONAI code; no LightningModule lives here and nothing here imports a stage.
"""

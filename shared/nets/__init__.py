"""shared/nets: one diffusion UNet for 2D and 3D plus named presets."""

from shared.nets.presets import UNET_PRESETS, build_monai_unet, build_unet
from shared.nets.unet import UNet, timestep_embedding

__all__ = ["UNET_PRESETS", "UNet", "build_monai_unet", "build_unet", "timestep_embedding"]

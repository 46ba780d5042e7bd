"""MONAI dict transforms for cases: load with geometry, RAS, spacing, HU <-> model space, crop/pad.

Keys: "image" (CT, HU) and "label" (class ids). Per-key interpolation: bilinear for CT, nearest
for labels. Model space for CT: HU clipped to [HU_MIN, HU_MAX] and mapped linearly to [-1, 1]
(the full range keeps bone and air; losses weight soft tissue instead of narrowing the window).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai import transforms as mt

from shared.data.downsample import downsample_labels

HU_MIN, HU_MAX = -1000.0, 1000.0


def hu_to_model(hu: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """HU -> [-1, 1] (clipped)."""
    x = (hu - HU_MIN) / (HU_MAX - HU_MIN) * 2.0 - 1.0
    return x.clip(-1.0, 1.0)


def model_to_hu(x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """[-1, 1] -> HU (inverse of `hu_to_model` inside the window)."""
    return (x.clip(-1.0, 1.0) + 1.0) / 2.0 * (HU_MAX - HU_MIN) + HU_MIN


class DownsampleLabelsd(mt.MapTransform):
    """Adds `out_key` = labels at `shape` by area pooling with tumour priority (channel-first)."""

    def __init__(
        self,
        keys: str,
        shape: Sequence[int],
        num_classes: int,
        priority_ids: Sequence[int] = (),
        out_key: str = "label_lowres",
    ) -> None:
        super().__init__(keys)
        self.shape, self.num_classes = tuple(shape), num_classes
        self.priority_ids, self.out_key = tuple(priority_ids), out_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = torch.as_tensor(d[key])  # (1, X, Y, Z)
            low = downsample_labels(lab[0], self.shape, self.num_classes, self.priority_ids)
            d[self.out_key] = low[None].to(torch.uint8)  # (1, x, y, z)
        return d


def case_transforms(
    spacing: Sequence[float] | None = None,
    spatial_size: Sequence[int] | None = None,
    model_space: bool = True,
    keys: Sequence[str] = ("image", "label"),
) -> mt.Compose:
    """Load a case dict {"image": path, "label": path} -> channel-first RAS tensors.

    spacing (mm): resample (bilinear CT, nearest labels); spatial_size: centre crop/pad (CT padded
    with air, labels with background); model_space: map CT HU -> [-1, 1].
    """
    keys = list(keys)
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    steps: list = [
        mt.LoadImaged(keys, image_only=True, ensure_channel_first=True),
        mt.Orientationd(keys, axcodes="RAS"),
    ]
    if spacing is not None:
        steps.append(mt.Spacingd(keys, pixdim=tuple(spacing), mode=modes, padding_mode="border"))
    if "image" in keys:
        if model_space:
            steps.append(mt.ScaleIntensityRanged("image", HU_MIN, HU_MAX, -1.0, 1.0, clip=True))
        else:
            steps.append(mt.CastToTyped("image", dtype=np.float32))
    if spatial_size is not None:
        air = -1.0 if model_space else HU_MIN
        if "image" in keys:
            steps.append(mt.ResizeWithPadOrCropd("image", spatial_size, value=air))
        if "label" in keys:
            steps.append(mt.ResizeWithPadOrCropd("label", spatial_size, value=0))
    if "label" in keys:
        steps.append(mt.CastToTyped("label", dtype=np.uint8))
    return mt.Compose(steps)

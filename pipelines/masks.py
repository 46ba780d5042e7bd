"""Mask -> CT: the user's label volumes on the model grid and the generated CT back on theirs.

A label volume (NIfTI, any orientation and spacing) is read with its world geometry, its ids are
mapped onto the label table (shared.label_maps: by name, e.g. TotalSegmentator v2), and it is
resampled (nearest neighbour) onto the model grid: the bundle's CT grid and spacing, RAS axes,
centred on the centre of the labelled region (the model's field of view, 384 x 384 x 400 mm for the
default bundle; labels outside it are cut). After stage 2 the CT (linear) and the labels (nearest)
go back onto the input's own grid (`--output-grid input`), with -1000 HU and background outside the
field of view; or stay on the model grid (`--output-grid model`). Resampling is SimpleITK's, in
world coordinates, so orientation, spacing and origin are respected whatever they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from shared.io.nifti import NiftiError, centred_affine, read_nifti, to_sitk
from shared.label_maps import LabelMap


@dataclass
class MaskCase:
    """A user's label volume: its own grid (shape, affine) and its label-table ids on the model grid."""

    path: Path
    shape: tuple[int, int, int]  # the input's own grid
    affine: np.ndarray  # the input's voxel -> world (RAS) affine
    model_labels: np.ndarray  # (X, Y, Z) uint8 on the model grid
    model_affine: np.ndarray


def labelled_centre(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World centre (RAS mm) of the bounding box of the labelled voxels (of the volume if none)."""
    idx = np.argwhere(labels > 0)
    if len(idx) == 0:
        idx = np.array([[0, 0, 0], [s - 1 for s in labels.shape]])
    corners = np.array([idx.min(0), idx.max(0)], dtype=np.float64)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return world.mean(0)


def resample(array: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray,
             nearest: bool, fill: float) -> np.ndarray:
    """array on (affine) -> (shape) on target_affine, in world coordinates (SimpleITK)."""
    src = to_sitk(array, affine)
    ref = to_sitk(np.zeros(shape, dtype=np.uint8), target_affine)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(src, ref, sitk.Transform(), interp, float(fill), src.GetPixelID())
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def load_mask(path: str | Path, label_map: LabelMap, grid: tuple[int, int, int],
              spacing: tuple[float, float, float]) -> MaskCase:
    """Read, map and put one label volume on the model grid; errors name the file."""
    path = Path(path)
    raw, affine = read_nifti(path)
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.equal(np.mod(raw, 1), 0)):
            raise NiftiError(f"{path}: label values must be integers, got {raw.dtype} with fractions")
        raw = raw.astype(np.int64)
    if raw.min() < 0:
        raise NiftiError(f"{path}: negative label value {int(raw.min())}")
    labels = label_map.apply(raw, str(path))
    model_affine = centred_affine(grid, spacing, labelled_centre(labels, affine))
    model = resample(labels, affine, grid, model_affine, nearest=True, fill=0).astype(np.uint8)
    return MaskCase(path, tuple(labels.shape), affine, model, model_affine)


def to_input_grid(case: MaskCase, ct_model: np.ndarray, labels_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Generated CT (linear; -1000 HU outside the field of view) and the model-grid labels
    (nearest; background outside) on the input's own grid."""
    ct = resample(ct_model.astype(np.float32), case.model_affine, case.shape, case.affine, False, -1000.0)
    lab = resample(labels_model.astype(np.uint8), case.model_affine, case.shape, case.affine, True, 0)
    return np.rint(ct).astype(np.int16), lab.astype(np.uint8)


def mask_files(path: str | Path) -> list[Path]:
    """A NIfTI file, or the NIfTI files of a folder (sorted; hidden and `._*` files skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NiftiError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise NiftiError(f"{path}: no .nii / .nii.gz files")
    return files


def case_id_of(path: Path) -> str:
    """The file name without .nii / .nii.gz."""
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]



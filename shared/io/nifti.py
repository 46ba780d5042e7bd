"""NIfTI reading and writing with true geometry (DESIGN.md section 2).

In memory: arrays (X, Y, Z) in RAS+ with a 4x4 voxel->world affine in mm (x toward the
patient's right, y anterior, z superior). SimpleITK holds LPS+ geometry; the conversion is
one sign flip of the first two world axes, done here and nowhere else. CT is written as int16
HU, labels as uint8, both with the same geometry, each file atomically.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from shared.io.atomic import atomic_path

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class NiftiError(ValueError):
    """An image that cannot be used: missing, unreadable, not 3D, degenerate geometry."""


def affine_to_sitk(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """RAS affine (4, 4) -> SimpleITK (spacing, origin, direction) in LPS."""
    affine = np.asarray(affine, dtype=np.float64)
    rot = affine[:3, :3]
    spacing = np.linalg.norm(rot, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise NiftiError(f"affine has zero or invalid spacing: {spacing.tolist()}")
    direction = _RAS_TO_LPS @ (rot / spacing)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.flatten().tolist())


def _affine_from_lps(spacing, origin, direction) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ np.asarray(direction).reshape(3, 3) * np.asarray(spacing)
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(origin)
    return affine


def sitk_to_affine(image: sitk.Image) -> np.ndarray:
    """SimpleITK geometry (LPS) -> RAS affine (4, 4)."""
    return _affine_from_lps(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """(X, Y, Z) array + RAS affine -> SimpleITK image (which indexes numpy as (Z, Y, X))."""
    if array.ndim != 3:
        raise NiftiError(f"expected a 3D (X, Y, Z) array, got shape {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    spacing, origin, direction = affine_to_sitk(affine)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write one volume atomically (compressed when the name ends in .gz)."""
    image = to_sitk(array, affine)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=str(path).endswith(".gz"))


def write_case(
    ct_path: str | Path,
    label_path: str | Path,
    ct_hu: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
) -> None:
    """Write CT (int16 HU) and labels (uint8) with one geometry; each file atomic."""
    if ct_hu.shape != labels.shape:
        raise NiftiError(f"CT shape {ct_hu.shape} != label shape {labels.shape}")
    ct = np.clip(np.rint(ct_hu), -32768, 32767).astype(np.int16)
    if labels.min() < 0 or labels.max() > 255:
        raise NiftiError(f"label values must fit uint8, got [{labels.min()}, {labels.max()}]")
    write_nifti(label_path, labels.astype(np.uint8), affine)
    write_nifti(ct_path, ct, affine)


def read_nifti(path: str | Path, dtype: type | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D image -> ((X, Y, Z) array, RAS affine). Clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"{path}: file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise NiftiError(f"{path}: cannot read image ({str(e).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NiftiError(
            f"{path}: expected a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    if min(image.GetSpacing()) <= 0:
        raise NiftiError(f"{path}: zero or negative spacing {image.GetSpacing()}")
    array = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    return (array.astype(dtype) if dtype else array), sitk_to_affine(image)


def read_header(path: str | Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (X, Y, Z) and RAS affine without reading the voxels."""
    path = Path(path)
    if not path.is_file():
        raise NiftiError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise NiftiError(f"{path}: cannot read header ({str(e).strip().splitlines()[-1]})") from None
    shape = tuple(int(s) for s in reader.GetSize())
    if len(shape) != 3:
        raise NiftiError(f"{path}: expected a 3D image, got {len(shape)}D")
    spacing = np.asarray(reader.GetSpacing())
    if np.any(spacing <= 0):
        raise NiftiError(f"{path}: zero or negative spacing {tuple(spacing)}")
    return shape, _affine_from_lps(spacing, reader.GetOrigin(), reader.GetDirection())


def reorient_to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the axes of a (X, Y, Z) array so index axes point R, A, S.

    Returns (array, new affine); world coordinates of every voxel are unchanged.
    """
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    out = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return out, new_affine


def centred_affine(shape: tuple[int, ...], spacing: tuple[float, ...],
                   centre_mm: tuple[float, float, float] | np.ndarray = (0.0, 0.0, 0.0)) -> np.ndarray:
    """(4, 4) float64 RAS+ voxel -> world (mm) of an axis-aligned grid: diagonal = spacing, the
    grid's centre at world point `centre_mm`."""
    aff = np.eye(4)
    for k in range(3):
        aff[k, k] = spacing[k]
        aff[k, 3] = centre_mm[k] - 0.5 * (shape[k] - 1) * spacing[k]
    return aff


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis."""
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)

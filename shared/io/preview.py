"""Preview pictures: axial + coronal montage of a CT with its label overlay (one implementation
for docs, demo and the pipeline).

Radiological convention: the patient's right is on the image's left, anterior at the top of
axial images, head at the top of coronal images; "R" and "L" markers say so. Arrays of any
orientation are first brought to RAS (shared.io.nifti.reorient_to_ras).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shared.io.atomic import atomic_path  # noqa: E402
from shared.io.nifti import reorient_to_ras, voxel_spacing  # noqa: E402
from shared.labels import LabelTable, default_labels  # noqa: E402

WINDOW = (40.0, 400.0)  # soft-tissue level / width in HU


def axial_image(volume: np.ndarray, k: int) -> np.ndarray:
    """RAS (X, Y, Z) -> axial slice k as displayed: rows anterior->posterior, cols right->left."""
    return volume[::-1, ::-1, k].T


def coronal_image(volume: np.ndarray, j: int) -> np.ndarray:
    """RAS (X, Y, Z) -> coronal slice j as displayed: rows head->feet, cols right->left."""
    return volume[::-1, j, ::-1].T


def _window(ct: np.ndarray) -> np.ndarray:
    level, width = WINDOW
    return np.clip((ct - (level - width / 2)) / width, 0.0, 1.0)


def _overlay(labels: np.ndarray, table: LabelTable, alpha: float) -> np.ndarray:
    colors = np.asarray(table.colors(), dtype=np.float32) / 255.0
    lab = np.clip(labels.astype(int), 0, len(colors) - 1)
    rgba = np.zeros(lab.shape + (4,), np.float32)
    rgba[..., :3] = colors[lab]
    rgba[..., 3] = np.where(lab > 0, alpha, 0.0)
    return rgba


def default_axial_slices(labels: np.ndarray, n: int) -> list[int]:
    """n axial slices spread over the labelled z range (all z if nothing is labelled)."""
    zs = np.nonzero(labels.reshape(-1, labels.shape[-1]).any(0))[0]
    lo, hi = (int(zs[0]), int(zs[-1])) if len(zs) else (0, labels.shape[-1] - 1)
    return [int(round(v)) for v in np.linspace(hi, lo, n + 2)[1:-1]]  # top of the body first


def focus_axial_slices(labels: np.ndarray, focus_ids: Sequence[int], n: int) -> list[int]:
    """`default_axial_slices`, where the slice of largest area of each large connected part of the
    focus classes (e.g. each tumour; parts of >= 20% of the largest one's voxels, at most n // 2)
    replaces the nearest default one, so the preview shows them; top of the body first."""
    from scipy import ndimage

    ks, locked = default_axial_slices(labels, n), set()
    parts, count = ndimage.label(np.isin(labels, list(focus_ids)), structure=np.ones((3, 3, 3)))
    sizes = np.bincount(parts.ravel())[1:]  # (count,)
    big = [int(i) + 1 for i in np.argsort(-sizes) if sizes[i] >= 0.2 * sizes.max()][: max(1, n // 2)]
    for part in big:
        k = int((parts == part).reshape(-1, labels.shape[-1]).sum(0).argmax())
        if k in ks:
            locked.add(ks.index(k))
            continue
        free = [i for i in range(len(ks)) if i not in locked]
        if free:
            i = min(free, key=lambda i: abs(ks[i] - k))
            ks[i] = k
            locked.add(i)
    return sorted(set(ks), reverse=True)


def save_preview(
    path: str | Path,
    ct_hu: np.ndarray,
    labels: np.ndarray | None,
    affine: np.ndarray,
    title: str | None = None,
    axial_slices: Sequence[int] | None = None,
    n_axial: int = 4,
    table: LabelTable | None = None,
    alpha: float = 0.35,
    dpi: int = 90,
) -> Path:
    """Write a PNG: `n_axial` axial slices and one coronal slice, CT windowed, labels overlaid
    (left half of each pair plain CT, right half with overlay). Returns the path."""
    table = table or default_labels()
    ct, ras_affine = reorient_to_ras(np.asarray(ct_hu, dtype=np.float32), affine)
    spacing = voxel_spacing(ras_affine)
    lab = (reorient_to_ras(np.asarray(labels), affine)[0] if labels is not None
           else np.zeros(ct.shape, np.uint8))
    ks = list(axial_slices) if axial_slices is not None else default_axial_slices(lab, n_axial)
    j = int(np.nonzero(lab.any(axis=(0, 2)))[0].mean()) if lab.any() else ct.shape[1] // 2
    panels = [(axial_image(ct, k), axial_image(lab, k), spacing[1] / spacing[0], f"axial z={k}")
              for k in ks]
    panels.append((coronal_image(ct, j), coronal_image(lab, j), spacing[2] / spacing[0],
                   f"coronal y={j}"))
    fig, axes = plt.subplots(2, len(panels), figsize=(2.6 * len(panels), 5.6), squeeze=False)
    for col, (img, seg, aspect, name) in enumerate(panels):
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(_window(img), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
            if row == 1:
                ax.imshow(_overlay(seg, table, alpha), aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.02, 0.5, "R", color="yellow", transform=ax.transAxes, fontsize=9,
                    fontweight="bold", ha="left", va="center")
            ax.text(0.98, 0.5, "L", color="yellow", transform=ax.transAxes, fontsize=9,
                    fontweight="bold", ha="right", va="center")
            if row == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: python -m shared.io.preview CT.nii.gz [LABELS.nii.gz] --out preview.png"""
    import argparse

    from shared.io.nifti import read_nifti

    parser = argparse.ArgumentParser(description="Axial + coronal preview of a CT and its labels.")
    parser.add_argument("ct")
    parser.add_argument("labels", nargs="?")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default=None)
    parser.add_argument("--n-axial", type=int, default=4)
    args = parser.parse_args(argv)
    ct, affine = read_nifti(args.ct)
    labels = read_nifti(args.labels)[0] if args.labels else None
    print(save_preview(args.out, ct, labels, affine, title=args.title, n_axial=args.n_axial))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

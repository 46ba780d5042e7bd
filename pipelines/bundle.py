"""The default bundle: `bundle.yaml` names the trained components where they are, with the label
table, the two grids, the HU mapping, the package versions it was made with and every file's sha256.

    guidegen-export --stage1 weights/stage1_phantom --ldm weights/stage2_ldm_phantom \\
        --ct-grid 128 128 80 --out weights --name guidegen-phantom   (pipelines.export)

Loading (`load_bundle`) checks every file's hash before anything is built and never unpickles
(components are safetensors + yaml, shared.io.artifact). Which bundle: `--bundle PATH`, else the
`GUIDEGEN_BUNDLE` environment variable, else the checkout's `weights/bundle.yaml` (`find_bundle`;
an installed wheel without the checkout needs `--bundle`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from shared.data.transforms import HU_MAX, HU_MIN
from shared.io.artifact import artifact_stem, read_component_spec
from shared.io.atomic import write_text_atomic
from shared.io.nifti import centred_affine
from shared.labels import LabelTable, default_labels

log = logging.getLogger(__name__)

FORMAT = "guidegen-bundle/1"
ENV_VAR = "GUIDEGEN_BUNDLE"
CHECKOUT_BUNDLE = Path(__file__).resolve().parents[1] / "weights" / "bundle.yaml"
VERSIONED = ("guidegen", "torch", "monai", "open_clip_torch", "SimpleITK", "safetensors")


class BundleError(ValueError):
    """A bundle that cannot be used: missing, malformed, a hash mismatch (names the file)."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def component_stems(stage1: Path, ldm: Path) -> list[Path]:
    """Every component stem the two loaders read: stage 1 (+ its external text encoder) and the
    LDM (+ its text encoder, class map and VAE), named by the artifacts' metadata."""
    meta1 = read_component_spec(stage1)["metadata"]
    meta2 = read_component_spec(ldm)["metadata"]
    stems = [stage1]
    if meta1.get("text_encoder_artifact"):
        stems.append(stage1.parent / meta1["text_encoder_artifact"])
    stems.append(ldm)
    stems += [ldm.parent / meta2[k] for k in ("text_encoder", "class_embed", "vae") if meta2.get(k)]
    return stems


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its yaml, the folder its paths are relative to, and the label table."""

    path: Path
    spec: dict[str, Any]
    labels: LabelTable

    @property
    def root(self) -> Path:
        return self.path.parent

    def component(self, role: str) -> Path:
        """The artifact stem of `role` ("stage1" or "stage2")."""
        return self.root / self.spec["components"][role]

    @property
    def ct_grid(self) -> tuple[int, int, int]:
        return tuple(self.spec["geometry"]["ct_grid"])  # type: ignore[return-value]

    @property
    def ct_spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.spec["geometry"]["ct_spacing"])  # type: ignore[return-value]

    @property
    def mask_grid(self) -> tuple[int, int, int]:
        return tuple(self.spec["geometry"]["mask_grid"])  # type: ignore[return-value]

    def ct_affine(self) -> np.ndarray:
        """(4, 4) RAS+ voxel -> world mm of the CT grid: diagonal spacing, centred at world 0."""
        return centred_affine(self.ct_grid, self.ct_spacing)


def find_bundle(path: str | Path | None = None) -> Path:
    """`path`, else $GUIDEGEN_BUNDLE, else the checkout's weights/bundle.yaml."""
    if path:
        return Path(path)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if CHECKOUT_BUNDLE.is_file():
        return CHECKOUT_BUNDLE
    raise BundleError(f"no bundle: pass --bundle PATH or set {ENV_VAR} (the default {CHECKOUT_BUNDLE} "
                      "exists only in a checkout of the repository)")


def load_bundle(path: str | Path | None = None, verify: bool = True) -> Bundle:
    """Read and (by default) verify a bundle: format, fields, every file's sha256, the label table
    against the components' class names, and the two grids covering the same extent."""
    path = find_bundle(path)
    if path.is_dir():
        path = path / "bundle.yaml"
    if not path.is_file():
        raise BundleError(f"{path}: bundle not found")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise BundleError(f"{path}: field 'format' must be {FORMAT!r}")
    for key in ("components", "files", "labels", "geometry"):
        if not isinstance(spec.get(key), dict | list):
            raise BundleError(f"{path}: missing field {key!r}")
    for role in ("stage1", "stage2"):
        if role not in spec["components"]:
            raise BundleError(f"{path}: field 'components.{role}' is missing")
    root = path.parent
    if verify:
        for name, digest in spec["files"].items():
            f = root / name
            if not f.is_file():
                raise BundleError(f"{path}: file {name} is missing ({f})")
            if sha256(f) != digest:
                raise BundleError(f"{path}: sha256 of {name} does not match the bundle (changed or corrupt file)")
        needed = component_stems(root / spec["components"]["stage1"], root / spec["components"]["stage2"])
        for stem in needed:
            for suffix in (".yaml", ".safetensors"):
                rel = os.path.relpath(stem.with_suffix(suffix), root)
                if rel not in spec["files"]:
                    raise BundleError(f"{path}: {rel} is loaded but has no sha256 in 'files'")
    labels = default_labels()
    if list(spec["labels"].get("classes", [])) != labels.names:
        raise BundleError(f"{path}: field 'labels.classes' {spec['labels'].get('classes')} differs from the "
                          f"label table {labels.name!r} ({labels.names})")
    bundle = Bundle(path=path, spec=spec, labels=labels)
    geo = spec["geometry"]
    ct_mm = np.asarray(geo["ct_grid"]) * np.asarray(geo["ct_spacing"], dtype=float)
    mask_mm = np.asarray(geo["mask_grid"]) * np.asarray(geo["mask_spacing"], dtype=float)
    if not np.allclose(ct_mm, mask_mm):
        raise BundleError(f"{path}: field 'geometry': the CT grid covers {ct_mm.tolist()} mm, the mask grid "
                          f"{mask_mm.tolist()} mm")
    return bundle


def make_bundle(stage1: str | Path, ldm: str | Path, out: str | Path, ct_grid: tuple[int, int, int],
                name: str = "guidegen-phantom", description: str = "") -> Path:
    """Write `out` (bundle.yaml) for the stage-1 and LDM artifacts: relative paths, hashes, grids."""
    out = Path(out)
    stage1, ldm = artifact_stem(stage1), artifact_stem(ldm)
    meta1 = read_component_spec(stage1)["metadata"]
    labels = default_labels()
    if meta1.get("class_names") and list(meta1["class_names"]) != labels.names:
        raise BundleError(f"{stage1}: class names {meta1['class_names']} differ from the label table {labels.names}")
    mask_grid, mask_spacing = [int(v) for v in meta1["grid"]], [float(v) for v in meta1["spacing"]]
    ct_spacing = [m * s / c for m, s, c in zip(mask_grid, mask_spacing, ct_grid, strict=True)]
    rel = lambda p: os.path.relpath(p, out.parent)  # noqa: E731
    files = {rel(stem.with_suffix(sfx)): sha256(stem.with_suffix(sfx))
             for stem in component_stems(stage1, ldm) for sfx in (".yaml", ".safetensors")}
    versions = {}
    for pkg in VERSIONED:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    spec = {
        "format": FORMAT, "name": name, "description": description,
        "components": {"stage1": rel(stage1), "stage2": rel(ldm)},
        "labels": {"name": labels.name, "classes": labels.names},
        "geometry": {"ct_grid": list(ct_grid), "ct_spacing": ct_spacing, "mask_grid": mask_grid,
                     "mask_spacing": mask_spacing, "orientation": "RAS", "centred_at_world_origin": True},
        "hu": {"range": [HU_MIN, HU_MAX], "model_space": "clip to the range, map linearly to [-1, 1]",
               "ct_dtype": "int16", "label_dtype": "uint8"},
        "versions": versions,
        "files": files,
    }
    write_text_atomic(out, yaml.safe_dump(spec, sort_keys=False))
    return out

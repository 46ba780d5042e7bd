"""Component artifacts: `NAME.safetensors` (tensors) + `NAME.yaml` (how to rebuild + metadata).

Loading never unpickles: the yaml names a class (restricted to this project's packages unless
the caller widens `allowed_prefixes`) and its keyword arguments; the weights are safetensors.
A bundle is a folder of components plus a `bundle.yaml` mapping roles to component names.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from shared.io.atomic import atomic_path, write_text_atomic

ALLOWED_PREFIXES: tuple[str, ...] = ("shared.", "stage1_mask.", "stage2_ct.", "pipelines.")


class ArtifactError(ValueError):
    """A component artifact that is missing, malformed or names a forbidden class."""


def artifact_stem(path: str | Path) -> Path:
    """A component's path without its .yaml / .safetensors suffix (either file, or the stem itself)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".yaml", ".safetensors") else path


def save_component(
    module: torch.nn.Module,
    path: str | Path,
    init_args: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `path.safetensors` + `path.yaml`; `init_args` must rebuild `type(module)`.

    Returns the stem path. Shared tensors (tied weights) are cloned so safetensors accepts them.
    """
    stem = artifact_stem(path)
    cls = type(module)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    spec = {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": init_args,
        "metadata": metadata or {},
        "format": "guidegen-component/1",
    }
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(state, str(tmp), metadata={"class_path": spec["class_path"]})
    write_text_atomic(stem.with_suffix(".yaml"), yaml.safe_dump(spec, sort_keys=False))
    return stem


def read_component_spec(path: str | Path) -> dict[str, Any]:
    stem = artifact_stem(path)
    spec_path = stem.with_suffix(".yaml")
    if not spec_path.is_file():
        raise ArtifactError(f"{spec_path}: component spec not found")
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as e:
        raise ArtifactError(f"{spec_path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ArtifactError(f"{spec_path}: missing field 'class_path'")
    spec.setdefault("init_args", {})
    spec.setdefault("metadata", {})
    return spec


def _import_class(class_path: str, allowed_prefixes: tuple[str, ...], where: str) -> type:
    if not class_path.startswith(allowed_prefixes):
        raise ArtifactError(f"{where}: class_path {class_path!r} is outside {allowed_prefixes}")
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ArtifactError(f"{where}: cannot import {class_path!r} ({e})") from None


def load_component(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    allowed_prefixes: tuple[str, ...] = ALLOWED_PREFIXES,
    strict: bool = True,
) -> torch.nn.Module:
    """Rebuild a component from its yaml and load its safetensors weights (no pickle).

    The rebuilt module gets an `artifact_metadata` attribute with the yaml's metadata.
    """
    stem = artifact_stem(path)
    spec = read_component_spec(stem)
    cls = _import_class(spec["class_path"], allowed_prefixes, str(stem.with_suffix(".yaml")))
    module = cls(**spec["init_args"])
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise ArtifactError(f"{weights}: weights not found")
    state = load_file(str(weights), device=str(map_location))
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ArtifactError(f"{weights}: weights do not fit {spec['class_path']} ({e})") from None
    module.artifact_metadata = dict(spec["metadata"])
    return module

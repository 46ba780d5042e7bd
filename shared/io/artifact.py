"""Component artifacts: `NAME.safetensors` (tensors) + `NAME.yaml` (how to rebuild + metadata
+ an optional `inference:` block, the component's sampling defaults).

Loading never unpickles: the yaml names a class (restricted to this project's packages unless
the caller widens `allowed_prefixes`) and its keyword arguments; the weights are safetensors.
A bundle is a `bundle.yaml` naming components where they are (pipelines.bundle).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from safetensors.torch import load_file, save_file

from shared.io.atomic import atomic_path, write_text_atomic

ALLOWED_PREFIXES: tuple[str, ...] = ("shared.", "stage1_mask.", "stage2_ct.", "pipelines.")


class ArtifactError(ValueError):
    """A component artifact that is missing, malformed or names a forbidden class."""


_D = TypeVar("_D", bound="InferenceDefaults")


class InferenceDefaults:
    """Base of a frozen dataclass holding a component's sampling defaults (its `inference:` block)."""

    @classmethod
    def from_block(cls: type[_D], block: Mapping[str, Any] | None, where: str = "inference") -> _D:
        """The defaults of `block` (missing fields: the class defaults); an unknown field is an error."""
        block = dict(block or {})
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(block) - known)
        if unknown:
            raise ArtifactError(f"{where}: unknown field(s) {unknown} (known: {sorted(known)})")
        return cls(**block)

    def override(self: _D, **values: Any) -> _D:
        """A copy with the given values; None keeps the default."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


def artifact_stem(path: str | Path) -> Path:
    """A component's path without its .yaml / .safetensors suffix (either file, or the stem itself)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".yaml", ".safetensors") else path


def save_component(
    module: torch.nn.Module,
    path: str | Path,
    init_args: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
) -> Path:
    """Write `path.safetensors` + `path.yaml`; `init_args` must rebuild `type(module)`;
    `inference`: the sampling defaults (written as the `inference:` block when given).

    Returns the stem path. Shared tensors (tied weights) are cloned so safetensors accepts them.
    """
    stem = artifact_stem(path)
    cls = type(module)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    spec = {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": init_args,
        "metadata": metadata or {},
        **({"inference": dict(inference)} if inference else {}),
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
    spec["inference"] = spec.get("inference") or {}
    if not isinstance(spec["inference"], dict):
        raise ArtifactError(f"{spec_path}: field 'inference' must be a mapping")
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

    The rebuilt module gets `artifact_metadata` and `artifact_inference` attributes (the yaml's
    metadata and inference block).
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
    module.artifact_inference = dict(spec["inference"])
    return module

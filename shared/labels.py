"""The label table: class ids, names, colours, tumour flags (read from a labels.yaml).

The default table is `data_manifests/labels.yaml`, found through importlib.resources so a
non-editable install works. Users with other label sets pass their own file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml


class LabelTableError(ValueError):
    """A labels.yaml that breaks the contract (names the file and the field)."""


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    color: tuple[int, int, int]
    tumor: bool = False


@dataclass(frozen=True)
class LabelTable:
    """Consecutive class ids 0..K-1, id 0 = background."""

    name: str
    classes: tuple[LabelClass, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def tumor_ids(self) -> list[int]:
        return [c.id for c in self.classes if c.tumor]

    def id_of(self, name: str) -> int:
        for c in self.classes:
            if c.name == name:
                return c.id
        raise KeyError(f"label {name!r} is not in table {self.name!r} (has {self.names})")

    def __getitem__(self, name: str) -> int:
        return self.id_of(name)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def colors(self) -> list[tuple[int, int, int]]:
        return [c.color for c in self.classes]


def parse_label_table(data: dict, source: str = "<dict>") -> LabelTable:
    """Validate a parsed labels.yaml mapping; errors name `source` and the field."""
    if not isinstance(data, dict) or "classes" not in data:
        raise LabelTableError(f"{source}: missing field 'classes'")
    out: list[LabelClass] = []
    for i, entry in enumerate(data["classes"]):
        where = f"{source}: classes[{i}]"
        if not isinstance(entry, dict):
            raise LabelTableError(f"{where}: expected a mapping, got {entry!r}")
        for key in ("id", "name"):
            if key not in entry:
                raise LabelTableError(f"{where}: missing field {key!r}")
        if entry["id"] != i:
            raise LabelTableError(f"{where}.id: ids must be consecutive from 0, got {entry['id']}")
        color = tuple(int(c) for c in entry.get("color", (128, 128, 128)))
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise LabelTableError(f"{where}.color: expected 3 ints in 0..255, got {color}")
        out.append(LabelClass(int(entry["id"]), str(entry["name"]), color, bool(entry.get("tumor", False))))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise LabelTableError(f"{source}: class names must be unique, got {names}")
    if not out or out[0].name != "background":
        raise LabelTableError(f"{source}: classes[0] must be 'background'")
    return LabelTable(str(data.get("name", "labels")), tuple(out))


def load_label_table(path: str | Path | None = None) -> LabelTable:
    """Load a label table; `None` gives the packaged default (data_manifests/labels.yaml)."""
    if path is None:
        return default_labels()
    path = Path(path)
    return parse_label_table(yaml.safe_load(path.read_text()), str(path))


@functools.cache
def default_labels() -> LabelTable:
    res = resources.files("data_manifests").joinpath("labels.yaml")
    return parse_label_table(yaml.safe_load(res.read_text()), "data_manifests/labels.yaml")

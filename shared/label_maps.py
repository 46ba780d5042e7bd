"""Label maps: another dataset's class ids / names -> the GuideGen label table, by NAME.

A map file (YAML) has `source` (id -> class name in the other dataset), optional `map` (source
name -> target name; names that the target table has map to themselves when `map` is absent) and
`default` (the target class of every source class not in `map`, usually background). An id in a
volume that `source` does not list is an error naming the id and the file. Shipped maps live in
`data_manifests/label_maps/` and are found by name (`load_label_map("totalsegmentator_v2")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from shared.labels import LabelTable, LabelTableError, default_labels


class LabelMapError(ValueError):
    """A label map or a volume that does not fit it; the message names the file and the id / field."""


@dataclass(frozen=True)
class LabelMap:
    """source id -> target id (a lookup table), with the names for messages."""

    name: str
    source: dict[int, str]
    target_ids: dict[int, int]
    where: str

    def apply(self, labels: np.ndarray, what: str = "<volume>") -> np.ndarray:
        """labels (any shape, integer ids of the source) -> uint8 target ids; unknown ids fail."""
        values = np.unique(labels)
        unknown = [int(v) for v in values if int(v) not in self.target_ids]
        if unknown:
            raise LabelMapError(f"{what}: label value(s) {unknown[:10]} are not in the label map {self.where} "
                                f"(it knows {len(self.target_ids)} ids, {min(self.target_ids)}..{max(self.target_ids)})")
        lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
        for v in values:
            lut[int(v)] = self.target_ids[int(v)]
        return lut[labels.astype(np.int64)]

    def id_of_name(self, name: str) -> int | None:
        """The target id of a source class NAME (per-class files), None if the map does not know it."""
        ids = [i for i, n in self.source.items() if n == name]
        return self.target_ids[ids[0]] if ids else None


def identity_map(table: LabelTable | None = None) -> LabelMap:
    """The map of volumes already in the target table's ids."""
    table = table or default_labels()
    return LabelMap(table.name, dict(enumerate(table.names)), {i: i for i in range(table.num_classes)}, table.name)


def parse_label_map(data: object, where: str, table: LabelTable | None = None) -> LabelMap:
    table = table or default_labels()
    if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
        raise LabelMapError(f"{where}: missing field 'source' (id -> class name)")
    try:
        source = {int(k): str(v) for k, v in data["source"].items()}
    except (TypeError, ValueError):
        raise LabelMapError(f"{where}: field 'source' must map integer ids to names") from None
    mapping = data.get("map")
    if mapping is None:
        mapping = {n: n for n in source.values() if n in table}
    if not isinstance(mapping, dict):
        raise LabelMapError(f"{where}: field 'map' must map source names to target names")
    default = data.get("default", "background")
    targets: dict[int, int] = {}
    try:
        default_id = table.id_of(str(default))
        for name, target in mapping.items():
            if name not in source.values():
                raise LabelMapError(f"{where}: field 'map': {name!r} is not a class of 'source'")
            table.id_of(str(target))
        for i, name in source.items():
            targets[i] = table.id_of(str(mapping[name])) if name in mapping else default_id
    except (KeyError, LabelTableError) as e:
        raise LabelMapError(f"{where}: {e}") from None
    return LabelMap(str(data.get("name", Path(where).stem)), source, targets, where)


def load_label_map(name_or_path: str | Path, table: LabelTable | None = None) -> LabelMap:
    """A shipped map by name (data_manifests/label_maps/NAME.yaml) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        res = resources.files("data_manifests").joinpath("label_maps", f"{name_or_path}.yaml")
        if not res.is_file():
            raise LabelMapError(f"no label map {name_or_path!r}: give a YAML file or a shipped name "
                                f"(data_manifests/label_maps/*.yaml)")
        return parse_label_map(yaml.safe_load(res.read_text()), f"data_manifests/label_maps/{name_or_path}.yaml", table)
    if not path.is_file():
        raise LabelMapError(f"{path}: label map not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LabelMapError(f"{path}: not valid YAML ({e})") from None
    return parse_label_map(data, str(path), table)

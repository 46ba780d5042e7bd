"""`Findings`: the structured content of a report (DESIGN.md section 2).

The ground truth of every phantom case and the currency of text alignment: reports are
abstracted into Findings (shared.text), volumes are read back into Findings
(findings_from_volume), and alignment is their per-field agreement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

SITES: tuple[str, ...] = ("ascending", "transverse", "descending", "sigmoid", "rectum")

# Report wording -> canonical site (DESIGN.md section 2). Keys are lower-case phrases.
SITE_NAMES: dict[str, str] = {
    "cecum": "ascending",
    "caecum": "ascending",
    "cecal": "ascending",
    "caecal": "ascending",
    "ileocecal": "ascending",
    "ileocaecal": "ascending",
    "ascending": "ascending",
    "right colon": "ascending",
    "hepatic flexure": "ascending",
    "transverse": "transverse",
    "splenic flexure": "descending",
    "descending": "descending",
    "left colon": "descending",
    "sigmoid": "sigmoid",
    "rectosigmoid": "sigmoid",
    "rectum": "rectum",
    "rectal": "rectum",
}

SPLEEN = ("normal", "enlarged")
LIVER = ("normal", "fatty")
KIDNEY = ("present", "absent")
BLADDER = ("normal", "distended")
PHASES = ("non_contrast", "portal_venous", "unknown")

_CHOICES: dict[str, tuple[str, ...]] = {
    "spleen": SPLEEN,
    "liver": LIVER,
    "kidney_left": KIDNEY,
    "kidney_right": KIDNEY,
    "bladder": BLADDER,
    "phase": PHASES,
}

# Fields compared by alignment metrics, in a fixed order.
FIELDS: tuple[str, ...] = ("tumor_sites", "tumor_presence", *_CHOICES)


class FindingsError(ValueError):
    """Invalid findings data; the message names the field."""


def normalize_site(name: str) -> str:
    """Map report wording ('caecum', 'hepatic flexure', 'rectal', ...) to a canonical site."""
    key = " ".join(name.lower().replace("-", " ").split())
    for suffix in (" colon", " flexure colon"):
        if key.endswith(suffix) and key[: -len(suffix)] in SITE_NAMES:
            key = key[: -len(suffix)]
    if key in SITE_NAMES:
        return SITE_NAMES[key]
    raise FindingsError(f"tumor site: unknown site name {name!r} (known: {sorted(SITE_NAMES)})")


@dataclass(frozen=True, order=True)
class Tumor:
    """One colorectal tumour: canonical `site` (None = not on the colon / unknown) and size in mm."""

    site: str | None
    size_mm: float | None = None

    def __post_init__(self) -> None:
        if self.site is not None and self.site not in SITES:
            raise FindingsError(f"tumors.site: {self.site!r} not in {SITES}")
        if self.size_mm is not None and not (0 < float(self.size_mm) < 1000):
            raise FindingsError(f"tumors.size_mm: {self.size_mm!r} must be in (0, 1000) mm")

    def _key(self) -> tuple:
        return (SITES.index(self.site) if self.site else len(SITES), -(self.size_mm or 0.0))


@dataclass(frozen=True)
class Findings:
    """What a report says about the abdomen. Absent organs and abnormal states are explicit."""

    tumors: tuple[Tumor, ...] = ()
    spleen: str = "normal"
    liver: str = "normal"
    kidney_left: str = "present"
    kidney_right: str = "present"
    bladder: str = "normal"
    phase: str = "unknown"
    other: str = field(default="", compare=False)  # free-text remainder, not compared

    def __post_init__(self) -> None:
        tumors = tuple(t if isinstance(t, Tumor) else Tumor(**t) for t in self.tumors)
        object.__setattr__(self, "tumors", tuple(sorted(tumors, key=Tumor._key)))
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise FindingsError(f"{name}: {value!r} not in {allowed}")

    # -- derived views ------------------------------------------------------------------------
    @property
    def tumor_sites(self) -> frozenset[str]:
        """The set of tumour sites (tumours with no site are left out)."""
        return frozenset(t.site for t in self.tumors if t.site)

    @property
    def tumor_presence(self) -> bool:
        return len(self.tumors) > 0

    def agreement(self, other: Findings) -> dict[str, bool]:
        """Per-field agreement (DESIGN.md section 9): sites as a set, presence, each attribute."""
        return {name: getattr(self, name) == getattr(other, name) for name in FIELDS}

    def replace(self, **changes: Any) -> Findings:
        return replace(self, **changes)

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["tumors"] = [
            {"site": t.site, "size_mm": None if t.size_mm is None else round(float(t.size_mm), 1)}
            for t in self.tumors
        ]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Findings:
        """Inverse of `to_dict`; unknown keys or bad values raise FindingsError naming the field."""
        if not isinstance(data, dict):
            raise FindingsError(f"findings: expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FindingsError(f"findings: unknown field(s) {sorted(unknown)}")
        kwargs = dict(data)
        tumors = kwargs.get("tumors", [])
        if not isinstance(tumors, list | tuple):
            raise FindingsError("tumors: expected a list")
        parsed = []
        for i, t in enumerate(tumors):
            if not isinstance(t, dict) or set(t) - {"site", "size_mm"}:
                raise FindingsError(f"tumors[{i}]: expected {{'site', 'size_mm'}}, got {t!r}")
            try:
                parsed.append(Tumor(site=t.get("site"), size_mm=t.get("size_mm")))
            except FindingsError as e:
                raise FindingsError(f"tumors[{i}]: {e}") from None
        kwargs["tumors"] = tuple(parsed)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Findings:
        return cls.from_dict(json.loads(text))

    # -- canonical text -----------------------------------------------------------------------
    def summary(self) -> str:
        """Canonical short text, e.g. 'tumor: sigmoid colon 40 mm. spleen: enlarged. ...'.

        Every field is stated (normal ones too), in a fixed order, so the text encoder sees one
        string per distinct Findings and the lexicon reads it back exactly.
        """
        if self.tumors:
            parts = []
            for t in self.tumors:
                where = f"{t.site} colon" if t.site not in (None, "rectum") else (t.site or "colon")
                parts.append(where + (f" {max(1, min(999, round(t.size_mm)))} mm" if t.size_mm else ""))
            tumor = "tumor: " + ", ".join(parts)
        else:
            tumor = "tumor: none"
        kidneys = {
            ("present", "present"): "both present",
            ("absent", "present"): "left absent",
            ("present", "absent"): "right absent",
            ("absent", "absent"): "both absent",
        }[(self.kidney_left, self.kidney_right)]
        return (
            f"{tumor}. spleen: {self.spleen}. liver: {self.liver}. kidneys: {kidneys}. "
            f"bladder: {self.bladder}. phase: {self.phase.replace('_', ' ')}."
        )


def findings_json_schema() -> dict[str, Any]:
    """JSON schema (draft 2020-12) of `Findings.to_dict()` — also the LLM backend's answer format."""
    enum = lambda values: {"type": "string", "enum": list(values)}  # noqa: E731
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Findings",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "tumors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "site": {"anyOf": [enum(SITES), {"type": "null"}]},
                        "size_mm": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]},
                    },
                    "required": ["site"],
                },
            },
            **{name: enum(values) for name, values in _CHOICES.items()},
            "other": {"type": "string"},
        },
    }

"""Dataset manifests: JSONL, one case per line (DESIGN.md section 2).

`{"case_id", "image", "label", "report", "split", "findings"}`; paths relative to the manifest.
Every error names the file, the line, the case and the field; `validate_manifest` collects all
of them before raising so a user fixes a broken manifest in one pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.findings import Findings, FindingsError
from shared.io.atomic import write_text_atomic
from shared.io.nifti import NiftiError, read_header, read_nifti
from shared.labels import LabelTable, default_labels

SPLITS = ("train", "val", "test")
CASE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REQUIRED = ("case_id", "image", "label", "report", "split", "findings")


class ManifestError(ValueError):
    """One or more problems in a manifest, each naming file:line, case and field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        head = f"{len(problems)} problem(s) in manifest:\n  " if len(problems) > 1 else ""
        super().__init__(head + "\n  ".join(problems))


@dataclass(frozen=True)
class ManifestEntry:
    case_id: str
    image: Path  # absolute
    label: Path  # absolute
    report: str
    split: str
    findings: Findings
    line: int = 0

    def to_record(self, root: Path) -> dict[str, Any]:
        """JSON-able line with paths relative to `root` (the manifest's folder)."""
        return {
            "case_id": self.case_id,
            "image": _relative(self.image, root),
            "label": _relative(self.label, root),
            "report": self.report,
            "split": self.split,
            "findings": self.findings.to_dict(),
        }


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def parse_record(record: Any, root: Path, source: str = "<manifest>", line: int = 0) -> ManifestEntry:
    """One manifest line (already JSON-decoded) -> entry; ManifestError names file:line + field."""
    where = f"{source}:{line}"
    if not isinstance(record, dict):
        raise ManifestError([f"{where}: expected a JSON object, got {type(record).__name__}"])
    case = record.get("case_id", "?")
    at = f"{where} (case {case!r})"
    problems = [f"{at}: missing field {k!r}" for k in REQUIRED if k not in record]
    if problems:
        raise ManifestError(problems)
    if not isinstance(case, str) or not CASE_ID.match(case):
        problems.append(f"{at}: field 'case_id' must match [A-Za-z0-9_-]{{1,64}}")
    for key in ("image", "label", "report"):
        if not isinstance(record[key], str) or not record[key].strip():
            problems.append(f"{at}: field {key!r} must be a non-empty string")
    if record["split"] not in SPLITS:
        problems.append(f"{at}: field 'split' is {record['split']!r}, expected one of {SPLITS}")
    try:
        findings = Findings.from_dict(record["findings"])
    except (FindingsError, TypeError) as e:
        problems.append(f"{at}: field 'findings': {e}")
    if problems:
        raise ManifestError(problems)
    return ManifestEntry(
        case_id=case,
        image=(root / record["image"]).resolve(),
        label=(root / record["label"]).resolve(),
        report=record["report"],
        split=record["split"],
        findings=findings,
        line=line,
    )


def read_manifest(path: str | Path, split: str | None = None) -> list[ManifestEntry]:
    """Parse and validate the JSONL text (not the image files); all problems in one error."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError([f"{path}: manifest not found"])
    entries: list[ManifestEntry] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            entry = parse_record(json.loads(line), path.parent, str(path), lineno)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg}, column {e.colno})")
            continue
        except ManifestError as e:
            problems.extend(e.problems)
            continue
        if entry.case_id in seen:
            problems.append(
                f"{where} (case {entry.case_id!r}): field 'case_id' repeats line {seen[entry.case_id]}"
            )
            continue
        seen[entry.case_id] = lineno
        entries.append(entry)
    if problems:
        raise ManifestError(problems)
    return [e for e in entries if split is None or e.split == split]


def check_case_files(
    entry: ManifestEntry, where: str, labels: LabelTable | None = None, read_labels: bool = True
) -> list[str]:
    """Problems with one case's files: missing/unreadable, not 3D, geometry mismatch, bad labels."""
    table = labels or default_labels()
    at = f"{where} (case {entry.case_id!r})"
    headers = {}
    problems = []
    for key in ("image", "label"):
        try:
            headers[key] = read_header(getattr(entry, key))
        except NiftiError as e:
            problems.append(f"{at}: field {key!r}: {e}")
    if problems:
        return problems
    (shape_i, aff_i), (shape_l, aff_l) = headers["image"], headers["label"]
    if shape_i != shape_l:
        problems.append(f"{at}: field 'label': shape {shape_l} != image shape {shape_i}")
    elif not np.allclose(aff_i, aff_l, atol=1e-3):
        problems.append(f"{at}: field 'label': geometry (affine) differs from the image's")
    if read_labels and not problems:
        values = np.unique(read_nifti(entry.label)[0])
        bad = [int(v) for v in values if v < 0 or v >= table.num_classes or v != int(v)]
        if bad:
            problems.append(
                f"{at}: field 'label': values {bad[:10]} not in label table "
                f"{table.name!r} (0..{table.num_classes - 1})"
            )
    return problems


def validate_manifest(
    path: str | Path, labels: LabelTable | None = None, read_labels: bool = True
) -> list[ManifestEntry]:
    """Text checks, then every case's files; raises one ManifestError listing every problem."""
    entries = read_manifest(path)
    problems: list[str] = []
    for e in entries:
        problems += check_case_files(e, f"{path}:{e.line}", labels, read_labels)
    if problems:
        raise ManifestError(problems)
    return entries


def write_manifest(path: str | Path, entries: list[ManifestEntry]) -> None:
    """Write atomically, paths relative to the manifest's folder."""
    path = Path(path)
    lines = [json.dumps(e.to_record(path.parent), ensure_ascii=False) for e in entries]
    write_text_atomic(path, "\n".join(lines) + "\n")

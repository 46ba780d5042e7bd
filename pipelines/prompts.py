"""Prompt files for batch generation: read, validate every line, expand to cases.

Formats (by suffix):
* `.txt`: one report per line (blank lines skipped); ids `p0001`, `p0002`, ... in order.
* `.jsonl`: one JSON object per line with `report` (text) or `findings` (the Findings schema);
  optional `id`, `seed`, `n`.
* `.csv`: a header row with `report` or `findings` (a JSON object as text), optional `id`, `seed`, `n`.

Everything is checked before anything is generated; all problems are reported at once, each
with the file, the line and the field (`PromptError`). A prompt with `n` > 1 (or `--n-per-prompt`)
gives cases `{id}_{k:02d}`; every case id matches `[A-Za-z0-9_-]{1,64}` and is unique. Each case's
seed is derived from (the prompt's seed, else the run's, and the case id), so it does not depend
on the order or batch of the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.findings import Findings, FindingsError
from shared.text.lexicon import ReportError, validate_report

CASE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
FORMATS = (".txt", ".jsonl", ".csv")
MAX_PER_PROMPT = 10_000


class PromptError(ValueError):
    """Problems in a prompt file; `problems` lists each one (file:line: field: what)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the prompt file:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Case:
    """One case to generate: its id, the prompt text (report or findings summary), the findings
    it asks for, its seed, and the line of the prompt file it comes from."""

    case_id: str
    report: str
    findings: Findings
    seed: int
    line: int


def case_seed(seed: int, case_id: str) -> int:
    """A 63-bit seed from (seed, case id): independent of order, batch and the other cases."""
    digest = hashlib.sha256(f"{int(seed)}:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _rows(path: Path, text: str) -> list[tuple[int, dict[str, Any] | str]]:
    """(line number, record) per non-blank line; a record that cannot be decoded is an error string."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [(i, {"report": line}) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if suffix == ".jsonl":
        out: list[tuple[int, dict[str, Any] | str]] = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                out.append((i, f"not valid JSON ({e.msg} at column {e.colno})"))
        return out
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _csv_rows(path, reader)
    except csv.Error as e:
        raise PromptError([f"{path}:{reader.line_num}: not valid CSV ({e})"]) from None


def _csv_rows(path: Path, reader: csv.DictReader) -> list[tuple[int, dict[str, Any] | str]]:
    if not reader.fieldnames or not ({"report", "findings"} & set(reader.fieldnames)):
        raise PromptError([f"{path}:1: header: needs a 'report' or 'findings' column, got {reader.fieldnames}"])
    rows: list[tuple[int, dict[str, Any] | str]] = []
    for row in reader:
        if None in row:
            rows.append((reader.line_num, f"more fields than the header has ({row[None]})"))
            continue
        rec: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
        if "findings" in rec:
            try:
                rec["findings"] = json.loads(rec["findings"])
            except json.JSONDecodeError as e:
                rows.append((reader.line_num, f"field 'findings': not valid JSON ({e.msg})"))
                continue
        rows.append((reader.line_num, rec))
    return rows


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"field {name!r} must be an integer, got {value!r}")
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"field {name!r} must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"field {name!r} must be in [{lo}, {hi}], got {v}")
    return v


def read_prompts(path: str | Path, n_per_prompt: int = 1, seed: int = 0,
                 abstractor: Callable[[str], Findings] | None = None) -> list[Case]:
    """The cases of a prompt file, in prompt order; PromptError lists every problem found."""
    from shared.text import abstract_report

    path = Path(path)
    abstractor = abstractor or abstract_report
    if path.suffix.lower() not in FORMATS:
        raise PromptError([f"{path}: unknown prompt format {path.suffix!r} (use {', '.join(FORMATS)})"])
    if not path.is_file():
        raise PromptError([f"{path}: file not found"])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PromptError([f"{path}:{line}: not UTF-8 text (bad byte 0x{data[e.start]:02x} at offset {e.start})"]) from None
    problems: list[str] = []
    cases: list[Case] = []
    seen: dict[str, int] = {}
    rows = _rows(path, text)
    if not rows:
        raise PromptError([f"{path}: no prompts (the file is empty)"])
    for index, (line, rec) in enumerate(rows, 1):
        where = f"{path}:{line}"
        if isinstance(rec, str):
            problems.append(f"{where}: {rec}")
            continue
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            continue
        unknown = sorted(set(rec) - {"id", "report", "findings", "seed", "n"})
        if unknown:
            problems.append(f"{where}: unknown field(s) {unknown} (known: id, report, findings, seed, n)")
        try:
            pid = str(rec["id"]) if "id" in rec else f"p{index:04d}"
            if not CASE_ID.match(pid):
                raise ValueError(f"field 'id': {pid!r} must match [A-Za-z0-9_-]{{1,64}}")
            n = _int(rec.get("n", n_per_prompt), "n", 1, MAX_PER_PROMPT)
            base = _int(rec.get("seed", seed), "seed", 0, 2**63 - 1)
            if "report" in rec:
                if not isinstance(rec["report"], str):
                    raise ValueError("field 'report' must be text")
                report = validate_report(rec["report"]).strip()
                findings = abstractor(report)
            elif "findings" in rec:
                findings = Findings.from_dict(rec["findings"])
                report = findings.summary()
            else:
                raise ValueError("needs field 'report' or 'findings'")
        except (ValueError, ReportError, FindingsError, TypeError, KeyError) as e:
            problems.append(f"{where}: {e}")
            continue
        ids = [pid] if n == 1 else [f"{pid}_{k:02d}" for k in range(n)]
        for cid in ids:
            if not CASE_ID.match(cid):
                problems.append(f"{where}: field 'id': case id {cid!r} is longer than 64 characters")
            elif cid in seen:
                problems.append(f"{where}: field 'id': case id {cid!r} already used on line {seen[cid]}")
            else:
                seen[cid] = line
                cases.append(Case(cid, report, findings, case_seed(base, cid), line))
    if problems:
        raise PromptError(problems)
    return cases

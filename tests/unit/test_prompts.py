"""Prompt files: formats, ids, per-case seeds, every bad line reported at once, fuzzed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.prompts import PromptError, case_seed, read_prompts
from shared.findings import Findings, Tumor


def test_txt_ids_in_order_and_n_per_prompt(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("4 cm mass in the sigmoid colon.\n\n  \nSpleen enlarged.\n", encoding="utf-8")
    cases = read_prompts(f)
    assert [c.case_id for c in cases] == ["p0001", "p0002"] and [c.line for c in cases] == [1, 4]
    assert cases[0].findings.tumors == (Tumor("sigmoid", 40.0),) and cases[1].findings.spleen == "enlarged"
    many = read_prompts(f, n_per_prompt=3, seed=7)
    assert [c.case_id for c in many][:3] == ["p0001_00", "p0001_01", "p0001_02"]
    assert many[1].seed == case_seed(7, "p0001_01") and len({c.seed for c in many}) == 6


def test_jsonl_fields_and_seeds(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    findings = Findings(tumors=(Tumor("rectum", 30.0),), kidney_left="absent").to_dict()
    f.write_text(json.dumps({"id": "a", "report": "Rectal mass.", "seed": 5, "n": 2}) + "\n"
                 + json.dumps({"id": "b", "findings": findings}) + "\n", encoding="utf-8")
    a0, a1, b = read_prompts(f, seed=1)
    assert (a0.case_id, a1.case_id, b.case_id) == ("a_00", "a_01", "b")
    assert a0.seed == case_seed(5, "a_00") and b.seed == case_seed(1, "b")  # a line's seed wins
    assert b.findings == Findings.from_dict(findings) and b.report == b.findings.summary()
    assert case_seed(5, "a_00") == case_seed(5, "a_00") != case_seed(6, "a_00")


def test_csv_with_findings_column(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    findings = json.dumps(Findings(spleen="enlarged").to_dict()).replace('"', '""')
    f.write_text(f'id,report,findings\nx,Fatty liver.,\ny,,"{findings}"\n', encoding="utf-8")
    x, y = read_prompts(f)
    assert x.findings.liver == "fatty" and y.findings.spleen == "enlarged"


def test_every_bad_line_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join([
        json.dumps({"id": "ok", "report": "Sigmoid mass."}),
        json.dumps({"id": "ok", "report": "Rectal mass."}),
        json.dumps({"id": "x" * 65, "report": "Rectal mass."}),
        json.dumps({"report": "   "}),
        json.dumps({"report": "mass", "n": 0}),
        json.dumps({"findings": {"spleen": "huge"}}),
        json.dumps({"report": "mass", "colour": "red"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": "long" * 16, "report": "mass", "n": 2}),
    ]) + "\n", encoding="utf-8")
    with pytest.raises(PromptError) as info:
        read_prompts(f)
    problems = info.value.problems
    assert any(p.startswith(f"{f}:2: field 'id': case id 'ok' already used on line 1") for p in problems)
    for line, text in [(3, "must match"), (4, "report is empty"), (5, "field 'n' must be in [1"),
                       (6, "spleen"), (7, "unknown field(s) ['colour']"), (8, "expected a JSON object"),
                       (9, "longer than 64 characters")]:
        assert any(p.startswith(f"{f}:{line}:") and text in p for p in problems), (line, problems)


def test_broken_csv_is_a_prompt_error(tmp_path: Path) -> None:
    """Found by the fuzz test below: a lone carriage return inside a CSV field."""
    f = tmp_path / "p.csv"
    f.write_bytes(b"report\r\x00")
    with pytest.raises(PromptError, match="p.csv:"):
        read_prompts(f)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="unknown prompt format"):
        read_prompts(tmp_path / "p.yaml")
    with pytest.raises(PromptError, match="file not found"):
        read_prompts(tmp_path / "p.txt")


@given(data=st.binary(max_size=300), suffix=st.sampled_from([".txt", ".jsonl", ".csv"]))
def test_any_bytes_give_cases_or_a_prompt_error(tmp_path_factory, data: bytes, suffix: str) -> None:
    f = tmp_path_factory.mktemp("fuzz") / f"p{suffix}"
    f.write_bytes(data)
    try:
        cases = read_prompts(f)
    except PromptError as e:
        assert e.problems and all(str(f) in p for p in e.problems)
    else:
        assert cases and len({c.case_id for c in cases}) == len(cases)

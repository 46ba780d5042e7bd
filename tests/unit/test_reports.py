"""Phantom reports state exactly their findings, in varied wording (DESIGN.md section 3)."""

import logging
import re
from collections import defaultdict

import numpy as np
import pytest

from shared.data.phantom import sample_findings
from shared.data.reports import report_sentences, write_report
from shared.findings import Findings, Tumor
from shared.text.lexicon import abstract_report

N = 200


@pytest.fixture(scope="module")
def cases():
    out = []
    for i in range(N):
        f = sample_findings(np.random.default_rng(i))
        out.append((f, write_report(f, np.random.default_rng([i, 1]))))
    return out


def test_reports_state_exactly_the_findings(cases, caplog):
    caplog.set_level(logging.ERROR)
    for f, report in cases:
        got = abstract_report(report)
        assert got == f, (report, f.summary(), got.summary())  # every field, nothing extra
        assert sorted(round(t.size_mm) for t in got.tumors) == pytest.approx(
            sorted(round(t.size_mm) for t in f.tumors), abs=1)


def test_no_contradiction_markers(cases):
    for f, report in cases:
        low = report.lower()
        if f.spleen == "normal":
            assert "splenomegaly." not in low or "no splenomegaly" in low
        if not f.tumors:
            assert not re.search(r"\b(\d+(\.\d+)?) ?(mm|cm)\b.*(mass|tumou?r|carcinoma)", low)


def test_at_least_five_wordings_per_finding():
    wordings: dict[tuple[str, str], set[str]] = defaultdict(set)
    variants = [
        Findings(tumors=(Tumor("sigmoid", 40),), spleen="enlarged", liver="fatty",
                 kidney_left="absent", bladder="distended", phase="portal_venous"),
        Findings(phase="non_contrast"),
    ]
    for i in range(N):
        for f in variants:
            for field, sentences in report_sentences(f, np.random.default_rng([i, 7])).items():
                value = "tumor" if field == "tumors" and f.tumors else (
                    "none" if field == "tumors" else str(getattr(f, field, f.kidney_left)))
                for s in sentences:
                    wordings[(field, value)].add(re.sub(r"\d+(\.\d+)?", "#", s))
    assert len(wordings) == 12
    for key, forms in wordings.items():
        assert len(forms) >= 5, (key, forms)

"""The report lexicon: sentence table, negation, contradictions, bad text, fuzzing, round trip."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.findings import BLADDER, KIDNEY, LIVER, PHASES, SITES, SPLEEN, Findings, Tumor
from shared.text.lexicon import MAX_REPORT_BYTES, ReportError, abstract_report, abstract_reports

TABLE = yaml.safe_load((Path(__file__).parents[1] / "data" / "report_sentences.yaml").read_text())
log = logging.getLogger(__name__)


def _id(i: int, row: dict) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", row["text"].lower()).strip("-")[:40] or "cjk"
    return f"{i:03d}-{slug}"


def _check(row: dict) -> dict:
    """Differences between what the lexicon reads and the table ({} when they agree)."""
    got = abstract_report(row["text"])
    want = Findings.from_dict(row["expected"])
    diff = {k: (v, want.to_dict()[k]) for k, v in got.to_dict().items()
            if k != "other" and v != want.to_dict()[k]}
    if " ".join(got.other.split()) != " ".join(want.other.split()):
        diff["other"] = (got.other, want.other)
    return diff


def test_table_is_large_and_valid():
    assert len(TABLE) >= 150
    for row in TABLE:
        Findings.from_dict(row["expected"])  # every expectation is a valid Findings


@pytest.mark.parametrize("row", TABLE, ids=[_id(i, r) for i, r in enumerate(TABLE)])
def test_sentence_table(row):
    assert _check(row) == {}, row["text"]


def test_table_accuracy_report():
    ok = sum(not _check(row) for row in TABLE)
    log.info("sentence table: %d/%d = %.1f%%", ok, len(TABLE), 100 * ok / len(TABLE))
    assert ok / len(TABLE) >= 0.95


# -- negation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "No evidence of colonic mass.", "Without sigmoid wall thickening.", "Negative for rectal tumour.",
    "No mass in the cecum, transverse colon or rectum.", "The sigmoid colon is free of tumor.",
    "Absence of a colonic neoplasm.", "Rectal mass is not identified.",
])
def test_negated_tumour(text):
    assert abstract_report(text).tumors == ()


def test_negation_scope_ends_at_but_and_sentence():
    f = abstract_report("No splenomegaly but there is a 3 cm mass in the sigmoid colon.")
    assert f.spleen == "normal" and f.tumors == (Tumor("sigmoid", 30.0),)
    f = abstract_report("No ascites. Splenomegaly.")
    assert f.spleen == "enlarged"
    f = abstract_report("No hydronephrosis, however the spleen is enlarged.")
    assert f.spleen == "enlarged"


def test_negated_list():
    f = abstract_report("No splenomegaly, hepatic steatosis, bladder distension or colonic mass.")
    assert f == Findings()


def test_right_colon_is_not_a_kidney():
    f = abstract_report("Right colon carcinoma. Status post left nephrectomy.")
    assert f.tumors == (Tumor("ascending"),)
    assert (f.kidney_left, f.kidney_right) == ("absent", "present")


def test_splenic_and_hepatic_flexure_are_colon():
    f = abstract_report("Mass at the splenic flexure and a second mass at the hepatic flexure.")
    assert f.tumor_sites == {"descending", "ascending"} and f.spleen == "normal"


# -- contradictions ----------------------------------------------------------------------------
def test_contradicting_site_warns_and_positive_wins(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.text.lexicon"):
        f = abstract_report("No sigmoid mass. IMPRESSION: 4 cm sigmoid carcinoma.")
    assert f.tumors == (Tumor("sigmoid", 40.0),)
    assert "contradiction" in caplog.text and "sigmoid" in caplog.text


def test_contradicting_organ_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.text.lexicon"):
        f = abstract_report("The spleen is normal in size. Splenomegaly.")
    assert f.spleen == "enlarged" and "contradiction" in caplog.text


def test_no_other_mass_is_not_a_contradiction(caplog):
    with caplog.at_level(logging.WARNING, logger="shared.text.lexicon"):
        f = abstract_report("Rectal carcinoma. No other colonic mass.")
    assert f.tumors == (Tumor("rectum"),) and "contradiction" not in caplog.text


# -- bad text policy ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("   \n\t ", "empty"), (b"\xff\xfe\x00abc", "UTF-8"), ("abc\x00def", "NUL"),
    ("report\x07", "control character"), ("x" * (MAX_REPORT_BYTES + 1), "too long"),
    ("\udcff broken", "UTF-8"), (12, "text"),
])
def test_bad_text_raises_clear_error(bad, why):
    with pytest.raises(ReportError, match=why):
        abstract_report(bad)


def test_bytes_and_non_ascii_are_valid(caplog):
    assert abstract_report(b"Sigmoid carcinoma.").tumor_sites == {"sigmoid"}
    with caplog.at_level(logging.WARNING, logger="shared.text.lexicon"):
        f = abstract_report("胆囊未见异常。")
    assert f == Findings() and f.other == "胆囊未见异常。" and "free text" in caplog.text


def test_batch_reports_every_bad_line():
    with pytest.raises(ReportError) as info:
        abstract_reports(["Splenomegaly.", "", "Fatty liver.", "a\x00b", b"\xc3\x28"])
    msg = str(info.value)
    assert "3 bad report(s)" in msg
    assert "line 2:" in msg and "line 4:" in msg and "line 5:" in msg and "line 1:" not in msg
    good = abstract_reports(["Splenomegaly.", "Fatty liver."])
    assert [g.spleen for g in good] == ["enlarged", "normal"] and good[1].liver == "fatty"


# -- property tests ----------------------------------------------------------------------------
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_WORDS = st.sampled_from(
    "no not without mass tumour sigmoid rectum cecum colon spleen splenomegaly liver steatosis "
    "left right kidney nephrectomy bladder distended contrast phase: tumor: , . ; 3 4.5 x cm mm "
    "and or but 乙状结肠 癌 ( ) s/p unremarkable enlarged normal absent two".split())


def _is_bad(text: str) -> bool:
    return (not text.strip() or len(text.encode("utf-8", "surrogatepass")) > MAX_REPORT_BYTES
            or any(ord(c) < 32 and c not in "\t\n\r\f\v" or 0x7F <= ord(c) < 0xA0
                   or 0xD800 <= ord(c) < 0xE000 for c in text))


@_FUZZ
@given(st.one_of(st.text(max_size=300), st.lists(_WORDS, max_size=40).map(" ".join)))
def test_no_string_crashes_the_lexicon(text):
    try:
        f = abstract_report(text)
    except ReportError:
        assert _is_bad(text)
    else:
        assert isinstance(f, Findings) and not _is_bad(text)


_TUMOR = st.builds(Tumor, site=st.sampled_from((*SITES, None)),
                   size_mm=st.one_of(st.none(), st.integers(1, 999).map(float)))
_FINDINGS = st.builds(
    Findings, tumors=st.lists(_TUMOR, max_size=4).map(tuple), spleen=st.sampled_from(SPLEEN),
    liver=st.sampled_from(LIVER), kidney_left=st.sampled_from(KIDNEY),
    kidney_right=st.sampled_from(KIDNEY), bladder=st.sampled_from(BLADDER),
    phase=st.sampled_from(PHASES))


@_FUZZ
@given(_FINDINGS)
def test_summary_round_trip(findings):
    back = abstract_report(findings.summary())
    assert back == findings and back.other == ""
    assert back.summary() == findings.summary()


@_FUZZ
@given(_FINDINGS, st.floats(0.6, 999.4))  # summary() prints round(0.5) = "0 mm"
def test_summary_round_trip_is_stable_with_fractional_sizes(findings, size):
    findings = findings.replace(tumors=(*findings.tumors, Tumor("rectum", size)))
    once = abstract_report(findings.summary())
    assert abstract_report(once.summary()) == once and once.summary() == findings.summary()

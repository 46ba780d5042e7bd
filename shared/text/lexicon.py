"""Report -> Findings with a deterministic radiology lexicon (GuideGen's "LLM abstraction" step).

`abstract_report(text)` validates the text (DESIGN.md section 4 bad-text policy), splits it into
sentences, reads each one (shared.text.parse) and merges what the sentences say:

- the same colon site named in several sentences (findings + impression) is one tumour; several
  tumours on one site need an explicit count ("two masses in the sigmoid colon");
- a tumour with no site ("colorectal cancer") is kept only if no sited tumour is stated;
- a positive statement beats a negated one ("no sigmoid mass" ... "sigmoid carcinoma"), with a
  warning when they really contradict (same site / same organ stated both ways);
- contrast: any portal-venous / contrast-enhanced statement wins over "non-contrast" (multiphase
  studies); nothing said -> "unknown";
- sentences with no recognised finding are kept verbatim in `Findings.other`.
The canonical `Findings.summary()` text reads back to the same Findings.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable

from shared.findings import Findings, Tumor
from shared.text import vocab as V
from shared.text.parse import Sentence, read_sentence

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 20_000  # 20 kB of UTF-8
_ABNORMAL = {"spleen": "enlarged", "liver": "fatty", "kidney_left": "absent",
             "kidney_right": "absent", "bladder": "distended"}
_CHARMAP = {"×": "x", "–": "-", "—": "-", "‐": "-", "‑": "-", "\u00a0": " ", "’": "'",
            "（": "(", "）": ")", "：": ":"}
_BOUNDARY = re.compile(r"\.(?=\s|$|[\"')\]])|[;!?\n\r。；！？]")
_ABBREV = re.compile(V.ABBREVIATIONS, re.IGNORECASE)
_HEADING = re.compile(V.HEADINGS, re.IGNORECASE)


class ReportError(ValueError):
    """A report that cannot be read at all (empty, binary, too long); the message says why."""


def validate_report(text: str | bytes) -> str:
    """Return the report as `str`, or raise ReportError naming what is wrong."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ReportError(f"report is not valid UTF-8 text (bad byte at offset {e.start})") from None
    if not isinstance(text, str):
        raise ReportError(f"report must be text, got {type(text).__name__}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ReportError(f"report is not valid UTF-8 text (lone surrogate at character {e.start})") from None
    if size > MAX_REPORT_BYTES:
        raise ReportError(f"report is too long: {size} bytes of UTF-8 (limit {MAX_REPORT_BYTES})")
    if not text.strip():
        raise ReportError("report is empty (only whitespace)" if text else "report is empty")
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v":
            what = "NUL byte" if ch == "\0" else f"control character U+{ord(ch):04X}"
            raise ReportError(f"report looks binary: {what} at character {i + 1}")
    return text


def _normalise(text: str) -> str:
    """Lower-case with the same length as `text`, so spans index the original."""
    out = []
    for ch in text:
        ch = _CHARMAP.get(ch, ch)
        low = ch.lower()
        if len(low) != 1:
            low = ch
        if not low.isascii() and low.isdecimal():
            low = str(unicodedata.decimal(low))
        out.append(low)
    return "".join(out)


def split_sentences(low: str) -> list[tuple[int, int]]:
    """Sentence spans (start, end incl. terminator); decimals and abbreviations do not split."""
    abbrev_dots = {m.end() - 1 for m in _ABBREV.finditer(low)}
    spans, start = [], 0
    for m in _BOUNDARY.finditer(low):
        if m.start() in abbrev_dots:
            continue
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(low)))
    return [(a, b) for a, b in spans if low[a:b].strip()]


def _contentful(fragment: str) -> bool:
    body = _HEADING.sub("", fragment)
    return bool(re.search(r"[^\W\d_]", body)) and not re.fullmatch(r"\W*[a-z0-9]{0,2}\W*", body)


def _merge_tumors(sentences: list[Sentence]) -> tuple[Tumor, ...]:
    best: dict[str | None, list[float | None]] = {}
    summary_sites: set[str | None] = set()
    for sent in sentences:
        per_site: dict[str | None, list[float | None]] = {}
        for site, sizes, n in sent.tumors:
            if sent.from_summary:
                per_site.setdefault(site, []).append(sizes[0] if sizes else None)
                summary_sites.add(site)
            else:
                per_site[site] = [sizes[i] if i < len(sizes) else None for i in range(n)]
        for site, sizes in per_site.items():
            prev = best.get(site)
            if prev is None or len(sizes) > len(prev):
                best[site] = list(sizes)
            elif len(sizes) == len(prev) == 1 and sizes[0] is not None:
                best[site] = [max(sizes[0], prev[0] or 0.0)]
    if None in best and None not in summary_sites and len(best) > 1:
        del best[None]
    return tuple(Tumor(site, z) for site, zs in best.items() for z in zs)


def abstract_report(text: str | bytes) -> Findings:
    """Read a free-text radiology report (or a `Findings.summary()`) into Findings.

    Raises ReportError for empty, binary or over-long text; unknown wording is kept in
    `Findings.other` (with a warning when nothing at all was recognised).
    """
    text = validate_report(text)
    low = _normalise(text)
    sentences: list[Sentence] = []
    other: list[str] = []
    prev_colon = False
    for a, b in split_sentences(low):
        if not _contentful(low[a:b]):
            continue
        body = _HEADING.sub("", low[a:b])
        sent = read_sentence(body, prev_colon=prev_colon)
        prev_colon = sent.colon_context or bool(sent.tumors)
        if sent.coref_sizes and sentences:
            _corefer(sentences, sent.coref_sizes)
        sentences.append(sent)
        if not (sent.recognized or sent.tumors or sent.events):
            other.append(" ".join(text[a:b].split()))
    tumors = _merge_tumors(sentences)
    states = _resolve_states(sentences, tumors)
    if other and not any(s.recognized or s.tumors or s.events for s in sentences):
        log.warning("no finding recognised in the report; kept as free text: %.80r", " ".join(other))
    elif other:
        log.info("%d sentence(s) not recognised, kept as free text", len(other))
    return Findings(tumors=tumors, other=" ".join(other), **states)


def _corefer(sentences: list[Sentence], sizes: list[float]) -> None:
    """'The lesion measures 28 mm': give the size to the last stated tumour that has none."""
    for sent in reversed(sentences):
        if sent.tumors:
            site, old, n = sent.tumors[-1]
            if not old:
                sent.tumors[-1] = (site, [max(sizes)], n)
            return


def _resolve_states(sentences: list[Sentence], tumors: tuple[Tumor, ...]) -> dict[str, str]:
    events = [e for s in sentences for e in s.events]
    for s in sentences:  # generic "kidneys unremarkable" -> both present, non-specific
        for f, v, _spec in list(s.events):
            if f == "kidneys":
                events += [("kidney_left", v, False), ("kidney_right", v, False)]
    states: dict[str, str] = {}
    for name, abnormal in _ABNORMAL.items():
        said = [(v, spec) for f, v, spec in events if f == name]
        positive = any(v == abnormal for v, _ in said)
        states[name] = abnormal if positive else (_default(name))
        if positive and any(v != abnormal and spec for v, spec in said):
            log.warning("contradiction: %s stated both %s and not; the positive statement wins (%s)",
                        name, abnormal, abnormal)
    phases = {v for f, v, _ in events if f == "phase"}
    states["phase"] = next((p for p in ("portal_venous", "non_contrast") if p in phases), "unknown")
    if {"portal_venous", "non_contrast"} <= phases:
        log.info("both non-contrast and contrast-enhanced phases stated; using portal_venous")
    sites = {t.site for t in tumors}
    negated = set().union(*(s.negated_sites for s in sentences)) if sentences else set()
    for site in sorted(s for s in sites & negated if s):
        log.warning("contradiction: a %s tumour is both negated and asserted; the positive "
                    "statement wins", site)
    if tumors and any(s.negated_colon for s in sentences):
        log.warning("contradiction: the report says there is no colonic tumour but also names %d; "
                    "the positive statement wins", len(tumors))
    return states


def _default(name: str) -> str:
    return "present" if name.startswith("kidney") else "normal"


def abstract_reports(texts: Iterable[str | bytes]) -> list[Findings]:
    """Abstract many reports; every bad entry is reported at once ('line N: why', 1-based)."""
    texts = list(texts)
    errors = []
    for i, t in enumerate(texts, start=1):
        try:
            validate_report(t)
        except ReportError as e:
            errors.append(f"line {i}: {e}")
    if errors:
        raise ReportError(f"{len(errors)} bad report(s):\n" + "\n".join(errors))
    return [abstract_report(t) for t in texts]

"""Sentence-level reading of a radiology report (the engine behind shared.text.lexicon).

One sentence is read in passes over a lower-cased copy; every pass *claims* the characters it
matched so later, more generic patterns cannot reuse them ("splenic flexure" is a colon site,
never the spleen; "without IV contrast" is a phase, never a negation):

1. pseudo-negations, kidney absence, phase; 2. colon sites; 3. organs; 4. tumour nouns;
5. attributes ("enlarged", "normal", ...); 6. sizes; 7. negation triggers and their scopes.

Attributes attach to the nearest organ (and to the organs listed with it); tumour nouns to the
nearest organ (a colon site, the colon, or another organ, which makes them not colorectal);
sizes to the nearest tumour or spleen, with other anatomy ("lymph nodes up to 9 mm") as sinks.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from shared.text import vocab as V

_F = re.IGNORECASE
_SITES = [(re.compile(p, _F), s) for p, s in V.SITE_PATTERNS]
_ORGANS = [(re.compile(p, _F), s) for p, s in V.ORGAN_PATTERNS]
_ATTRS = [(re.compile(p, _F), s) for p, s in V.ATTR_PATTERNS]
_PHASES = [(re.compile(p, _F), s) for p, s in V.PHASE_PATTERNS]
_KIDNEY = [re.compile(p, _F) for p in V.KIDNEY_ABSENT]
_RX = {name: re.compile(getattr(V, name), _F) for name in (
    "TUMOR", "ANAPHOR", "COUNT", "RESECTION", "PSEUDO_NEGATION", "PRE_NEGATION", "HYPOTHETICAL",
    "POST_NEGATION", "SCOPE_END", "AFFIRM", "SIZE_DIMS", "SIZE_PAIR", "SIZE_ONE", "FOCAL",
    "SIZE_IS_DISTANCE", "BENIGN_THICKENING", "SOLITARY_KIDNEY", "KIDNEYS_SUMMARY", "COLON_CONTEXT")}
_SUMMARY_TUMOR = re.compile(r"^\s*tumou?rs?\s*:\s*(.*?)\s*$", _F | re.S)
_COMMA = re.compile(r"[,，、]")
_GLUE_WORD = re.compile(
    r"and|or|as|well|the|in|at|of|to|measuring|measures|approximately|approx|about|up|respectively"
    r"|colon|segment|x|by|mm|cm|\d+(?:\.\d+)?|both|also|和|及|与", _F)
_SIDES = {"left": ("kidney_left",), "l": ("kidney_left",), "左": ("kidney_left",),
          "right": ("kidney_right",), "r": ("kidney_right",), "右": ("kidney_right",),
          "bilateral": ("kidney_left", "kidney_right"), "both": ("kidney_left", "kidney_right"),
          "双": ("kidney_left", "kidney_right")}
SPLEEN_MAX_MM = 130.0  # craniocaudal spleen length above 13 cm = splenomegaly


@dataclass
class Mention:
    kind: str  # site | organ | tumor | attr | size | anaphor
    start: int
    end: int
    value: object = None
    negated: bool = False
    hypothetical: bool = False


@dataclass
class Sentence:
    """What one sentence says: tumours, state events, negations; `recognized` if anything."""

    tumors: list[tuple[str | None, list[float], int]] = field(default_factory=list)  # site, sizes, n
    events: list[tuple[str, str, bool]] = field(default_factory=list)  # field, value, specific
    negated_sites: set[str] = field(default_factory=set)
    negated_colon: bool = False  # "no colonic mass" (not "no other ...")
    coref_sizes: list[float] = field(default_factory=list)
    colon_context: bool = False
    from_summary: bool = False
    recognized: bool = False


def _gap(a: Mention, b: Mention) -> int:
    return max(a.start - b.end, b.start - a.end, 0)


class _Reader:
    def __init__(self, text: str, prev_colon: bool) -> None:
        self.s = text
        self.no_other = False
        self.claimed = bytearray(len(text))
        self.out = Sentence()
        self.prev_colon = prev_colon
        commas = [m.start() for m in _COMMA.finditer(text)]
        self.seg_of = [0] * (len(text) + 1)
        k = 0
        for i in range(len(text) + 1):
            while k < len(commas) and commas[k] < i:
                k += 1
            self.seg_of[i] = k

    # -- matching helpers ---------------------------------------------------------------------
    def _find(self, rx: re.Pattern, claim: bool = True):
        for m in rx.finditer(self.s):
            if m.end() > m.start() and not any(self.claimed[m.start():m.end()]):
                if claim:
                    self.claimed[m.start():m.end()] = b"\1" * (m.end() - m.start())
                yield m

    def _seg(self, m: Mention) -> int:
        return self.seg_of[m.start]

    def _nearest(self, x: Mention, cands: list[Mention], same_seg_only: bool = False):
        same = [c for c in cands if self._seg(c) == self._seg(x)]
        pool = same or ([] if same_seg_only else cands)
        return min(pool, key=lambda c: (_gap(x, c), c.start < x.start), default=None)

    def _groups(self, organs: list[Mention]) -> dict[int, list[Mention]]:
        """Organs listed together ("cecum, ascending and transverse colon") share a group."""
        groups: dict[int, list[Mention]] = {}
        ordered = sorted(organs, key=lambda m: m.start)
        gid = 0
        for i, m in enumerate(ordered):
            if i and not self._is_glue(self.s[ordered[i - 1].end:m.start]):
                gid += 1
            m.value = (m.value, gid) if not isinstance(m.value, tuple) else (m.value[0], gid)
            groups.setdefault(gid, []).append(m)
        return groups

    @staticmethod
    def _is_glue(between: str) -> bool:
        words = re.findall(r"[a-z]+|\d+(?:\.\d+)?|[^\sa-z\d,;:()\-/&]", between, _F)
        return all(_GLUE_WORD.fullmatch(w) for w in words)

    # -- passes -------------------------------------------------------------------------------
    def read(self) -> Sentence:
        s, out = self.s, self.out
        summary = _SUMMARY_TUMOR.match(s)
        if summary:
            self._summary_tumors(summary.group(1))
        list(self._find(_RX["PSEUDO_NEGATION"]))
        self._kidneys()
        for rx, phase in _PHASES:
            for _ in self._find(rx):
                out.events.append(("phase", phase, True))
        sites = [Mention("site", m.start(), m.end(), site) for rx, site in _SITES for m in self._find(rx)]
        organs = [Mention("organ", m.start(), m.end(), o) for rx, o in _ORGANS for m in self._find(rx)]
        nouns = [Mention("tumor", m.start(), m.end()) for m in self._find(_RX["TUMOR"])]
        nouns += [Mention("anaphor", m.start(), m.end()) for m in self._find(_RX["ANAPHOR"])]
        attrs = [Mention("attr", m.start(), m.end(), a) for rx, a in _ATTRS for m in self._find(rx)]
        sizes = self._sizes()
        self._negate(sites + organs + nouns + attrs)
        out.colon_context = bool(sites or any(o.value == "colon" for o in organs))
        self._groups(sites + [o for o in organs if o.value != "spleen+enlarged" and o.value != "liver+fatty"])
        self._organ_states(organs, attrs, sites, sizes, nouns)
        if not summary:
            self._tumors(sites, organs, nouns, sizes)
        return out

    def _summary_tumors(self, body: str) -> None:
        out = self.out
        out.recognized = out.from_summary = True
        if re.fullmatch(r"(?:none|nil|no|absent|-)?\.?", body.strip(), _F):
            return
        for item in _COMMA.split(body):
            site = next((s for rx, s in _SITES if rx.search(item)), None)
            size = [_mm(m.group(1), m.group(2)) for m in _RX["SIZE_ONE"].finditer(item)]
            out.tumors.append((site, [z for z in size if z is not None][:1], 1))
        self.claimed[:] = b"\1" * len(self.claimed) if body else self.claimed

    def _kidneys(self) -> None:
        ev = self.out.events
        for m in self._find(_RX["KIDNEYS_SUMMARY"]):
            word = m.group(1).split()
            sides = _SIDES[word[0]]
            ev += [(k, "present" if word[1] == "present" else "absent", True) for k in sides]
        for i, rx in enumerate(_KIDNEY):
            for m in self._find(rx):
                if i == 0:  # partial nephrectomy: the kidney stays
                    ev.append(("kidneys", "present", False))
                    continue
                ev += [(k, "absent", True) for k in _SIDES[m.group(1)]]
        for m in self._find(_RX["SOLITARY_KIDNEY"]):
            left, right = ("kidney_left",), ("kidney_right",)
            other = right if _SIDES[m.group(1)] == left else left
            ev += [(k, "absent", True) for k in other]

    def _sizes(self) -> list[Mention]:
        found = []
        for m in self._find(_RX["SIZE_DIMS"]):
            dims = [_mm(g, m.group(4)) for g in m.group(1, 2, 3) if g]
            found.append(Mention("size", m.start(), m.end(), max(d or 0 for d in dims)))
        for m in self._find(_RX["SIZE_PAIR"]):
            unit1 = m.group(2) or m.group(4)
            a, b = m.span(1), m.span(3)
            found.append(Mention("size", a[0], a[1], _mm(m.group(1), unit1)))
            found.append(Mention("size", b[0], m.end(), _mm(m.group(3), m.group(4))))
        for m in self._find(_RX["SIZE_ONE"]):
            found.append(Mention("size", m.start(), m.end(), _mm(m.group(1), m.group(2))))
        return [z for z in found if z.value and not _RX["SIZE_IS_DISTANCE"].match(self.s[z.end:])]

    def _negate(self, mentions: list[Mention]) -> None:
        s = self.s
        ends = [m.start() for m in _RX["SCOPE_END"].finditer(s)]
        bounds = sorted({0, *ends, *(i + 1 for i, ch in enumerate(s) if ch in ":(" or _COMMA.match(ch))})
        for m in self._find(_RX["POST_NEGATION"]):
            start = bounds[bisect.bisect_right(bounds, m.start()) - 1]
            for x in mentions:
                if start <= x.start < m.start():
                    x.negated = True
        for m in self._find(_RX["PRE_NEGATION"]):
            hyp = bool(_RX["HYPOTHETICAL"].fullmatch(m.group(0)))
            stop = min([len(s)] + [e for e in ends if e >= m.end()])
            for c in _COMMA.finditer(s, m.end(), stop):
                nxt = _COMMA.search(s, c.end(), stop)
                if _RX["AFFIRM"].search(s, c.end(), nxt.start() if nxt else stop):
                    stop = c.start()
                    break
            for x in mentions:
                if m.end() <= x.start < stop:
                    x.negated, x.hypothetical = True, x.hypothetical or hyp
            if not hyp and re.match(r"\s*(?:other|additional|further|second|separate)", s[m.end():]):
                self.no_other = True

    def _organ_states(self, organs, attrs, sites, sizes, nouns) -> None:
        ev, s = self.out.events, self.s
        for o in organs:
            name = o.value[0] if isinstance(o.value, tuple) else o.value
            if name in ("spleen+enlarged", "liver+fatty"):
                field_, value = name.split("+")
                ev.append((field_, "normal" if o.negated else value, True))
        anchors = [o for o in organs if isinstance(o.value, tuple)] + sites
        for a in attrs:
            target = self._nearest(a, anchors)
            if target is None:
                continue
            group = [o for o in anchors if o.value[1] == target.value[1]]
            for o in group:
                self._attr_event(o, a)
        lesion_spleen = any(
            (t := self._nearest(n, anchors)) is not None and t.value[0] == "spleen" for n in nouns)
        spleen = [o for o in organs if isinstance(o.value, tuple) and o.value[0] == "spleen"]
        for z in sizes:
            if spleen and not lesion_spleen:
                others = [o for o in anchors if o.value[0] != "spleen"] + nouns
                near = self._nearest(z, spleen + others)
                if near in spleen:
                    z.kind = "spleen-size"
                    ev.append(("spleen", "enlarged" if z.value > SPLEEN_MAX_MM else "normal", True))
        del s

    def _attr_event(self, o: Mention, a: Mention) -> None:
        ev, organ, attr = self.out.events, o.value[0], a.value
        neg = a.negated
        if o.kind == "site":
            if attr == "normal" and not neg:
                self.out.negated_sites.add(organ)
                self.out.recognized = True
            return
        if organ == "colon" and attr == "normal" and not neg:
            self.out.recognized = True
        elif organ == "spleen" and attr in ("enlarged", "normal"):
            ev.append(("spleen", "normal" if neg or attr == "normal" else "enlarged", True))
        elif organ == "liver" and attr in ("lowatt", "normal"):
            focal = _RX["FOCAL"].search(self.s)
            if attr == "normal" or not focal:
                ev.append(("liver", "normal" if neg or attr == "normal" else "fatty", True))
        elif organ == "bladder" and attr in ("distended", "normal"):
            ev.append(("bladder", "normal" if neg or attr == "normal" else "distended", True))
        elif organ.startswith("kidney") and attr in ("normal", "present") and not neg:
            ev.append((organ, "present", organ != "kidneys"))

    def _tumors(self, sites, organs, nouns, sizes) -> None:
        out, s = self.out, self.s
        resected = bool(_RX["RESECTION"].search(s))
        asserted_sites = [x for x in sites if not x.negated]
        for x in sites:
            if x.negated and not x.hypothetical:
                out.negated_sites.add(x.value[0])
        anchors_all = [o for o in organs if isinstance(o.value, tuple)] + sites
        linked: dict[int, list[Mention]] = {}  # group id -> nouns
        colon_nouns: list[Mention] = []
        count = max([V.COUNT_WORDS[m.group(1)] for m in _RX["COUNT"].finditer(s)] or [1])
        benign = bool(_RX["BENIGN_THICKENING"].search(s))
        for n in nouns:
            asserted = not n.negated and not resected
            if benign and "thicken" in s[n.start:n.end]:
                asserted = False  # "wall thickening ..., likely diverticulitis"
            cands = [a for a in anchors_all if not (asserted and a.kind == "site" and a.negated)]
            owner = self._nearest(n, cands)
            name = owner.value[0] if owner else None
            if n.kind == "anaphor" or owner is None:
                if asserted and self.prev_colon:
                    out.coref_sizes += [z.value for z in sizes if z.kind == "size"]
                    out.recognized = True
                elif self.prev_colon or _RX["COLON_CONTEXT"].search(s):
                    out.recognized = True
                continue
            if owner.kind != "site" and name != "colon":
                continue  # a lesion of another organ
            out.recognized = True
            if not asserted:
                if name == "colon" and n.negated and not n.hypothetical and not self.no_other:
                    out.negated_colon = True
                continue
            if owner.kind != "site":
                site_owner = self._nearest(n, asserted_sites)
                if site_owner is None:
                    colon_nouns.append(n)
                    continue
                owner = site_owner
            linked.setdefault(owner.value[1], []).append(n)
        self._assemble(asserted_sites, linked, colon_nouns, sizes, organs, count)

    def _assemble(self, asserted_sites, linked, colon_nouns, sizes, organs, count) -> None:
        out, s = self.out, self.s
        tumor_sites = sorted({x.value[0] for x in asserted_sites if x.value[1] in linked},
                             key=lambda site: min(x.start for x in asserted_sites if x.value[0] == site))
        shared = {id(n) for g, ns in linked.items() for n in ns
                  if len({x.value[0] for x in asserted_sites if x.value[1] == g}) > 1}
        anchors: list[tuple[Mention, str | None]] = []
        for site in tumor_sites:
            anchors += [(x, site) for x in asserted_sites if x.value[0] == site]
            anchors += [(n, site) for g, ns in linked.items() for n in ns if id(n) not in shared
                        and any(x.value[0] == site and x.value[1] == g for x in asserted_sites)]
        if colon_nouns and not tumor_sites:
            anchors += [(n, None) for n in colon_nouns]
            anchors += [(o, None) for o in organs if isinstance(o.value, tuple) and o.value[0] == "colon"]
            tumor_sites = [None]
        if not tumor_sites:
            return
        sinks = [o for o in organs if isinstance(o.value, tuple) and o.value[0] not in ("colon",)]
        per_site: dict[str | None, list[float]] = {t: [] for t in tumor_sites}
        free = [z for z in sizes if z.kind == "size"]
        if re.search(r"\brespectively\b", s) and len(free) == len(tumor_sites) > 1:
            for site, z in zip(tumor_sites, sorted(free, key=lambda z: z.start), strict=True):
                per_site[site].append(z.value)
        else:
            for z in sorted(free, key=lambda z: z.start):
                mentions = [a for a, _ in anchors]
                near = self._nearest(z, mentions + sinks, same_seg_only=True)
                if near is None or near in sinks:
                    near = None if near in sinks else self._nearest(z, mentions)
                if near is not None:
                    per_site[next(site for a, site in anchors if a is near)].append(z.value)
        n_each = count if len(tumor_sites) == 1 and count > 1 else 1
        for site in tumor_sites:
            zs = per_site[site]
            out.tumors.append((site, zs if n_each > 1 else ([max(zs)] if zs else []), n_each))


def _mm(number: str, unit: str) -> float | None:
    value = float(number) * (10.0 if unit.lower().startswith(("c", "厘")) else 1.0)
    return value if 0 < value < 1000 else None


def read_sentence(text: str, prev_colon: bool = False) -> Sentence:
    """Read one lower-cased sentence; `prev_colon`: the previous sentence was about the colon."""
    return _Reader(text, prev_colon).read()

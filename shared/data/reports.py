"""Free-text radiology reports written from phantom `Findings` (DESIGN.md section 3).

Varied on purpose: several templates per finding, synonyms for sites and lesion nouns, sizes in
mm or cm (sometimes as two diameters), normal-organ filler with negations, two report styles
(structured by organ, or prose) and shuffled sentence order. Every finding is stated exactly
once and nothing is stated that the Findings do not hold.
"""

from __future__ import annotations

import numpy as np

from shared.findings import Findings, Tumor

# Report wording per canonical site. All map back through shared.findings.SITE_NAMES.
SITE_WORDS: dict[str, tuple[str, ...]] = {
    "ascending": ("ascending colon", "cecum", "caecum", "hepatic flexure", "right colon",
                  "proximal ascending colon"),
    "transverse": ("transverse colon", "mid transverse colon", "proximal transverse colon",
                   "distal transverse colon"),
    "descending": ("descending colon", "splenic flexure", "left colon", "mid descending colon"),
    "sigmoid": ("sigmoid colon", "sigmoid", "rectosigmoid junction", "distal sigmoid colon"),
    "rectum": ("rectum", "upper rectum", "mid rectum", "rectal wall"),
}
LESION_NOUNS = ("mass", "tumor", "tumour", "carcinoma", "lesion", "neoplasm", "soft tissue mass")


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _size_text(size_mm: float, rng: np.random.Generator) -> str:
    """'42 mm', '4.2 cm', '4.2 x 3.1 cm' (the first number is the largest diameter)."""
    style = int(rng.integers(4))
    if style == 0:
        return f"{round(size_mm)} mm"
    if style == 1:
        return f"{size_mm / 10:.1f} cm"
    small = size_mm * rng.uniform(0.6, 0.9)
    if style == 2:
        return f"{size_mm / 10:.1f} x {small / 10:.1f} cm"
    return f"{round(size_mm)} x {round(small)} mm"


def _tumor_sentence(t: Tumor, rng: np.random.Generator) -> str:
    site = _pick(rng, SITE_WORDS[t.site or "sigmoid"])
    noun = _pick(rng, LESION_NOUNS)
    size = _size_text(t.size_mm or 30.0, rng)
    where = site if site.startswith("rect") else f"the {site}"
    templates = (
        f"There is a {size} {noun} in {where}.",
        f"A {size} {noun} is seen arising from {where}.",
        f"Irregular {noun} of {where} measuring {size}.",
        f"{noun.capitalize()} involving {where}, approximately {size}.",
        f"Circumferential wall thickening with a {noun} in {where} ({size}).",
        f"{size} {noun} at {where}, concerning for primary colorectal malignancy.",
        f"Eccentric {noun} in {where}, measuring up to {size}.",
    )
    return _pick(rng, templates)


def _phrases(f: Findings, rng: np.random.Generator) -> dict[str, list[str]]:
    """Sentences keyed by the field they state."""
    out: dict[str, list[str]] = {}
    if f.tumors:
        out["tumors"] = [_tumor_sentence(t, rng) for t in f.tumors]
    else:
        out["tumors"] = [_pick(rng, (
            "No colonic mass.",
            "No evidence of a colorectal mass.",
            "The colon is unremarkable without focal wall thickening or mass.",
            "No colorectal tumor is identified.",
            "Large bowel: no mass or wall thickening.",
            "Negative for colonic neoplasm.",
        ))]
    out["spleen"] = [_pick(rng, (
        "The spleen is normal in size.",
        "Spleen unremarkable.",
        "No splenomegaly.",
        "Normal spleen.",
        "The spleen measures 10 cm, within normal limits.",
        "Spleen is of normal size and attenuation.",
    ) if f.spleen == "normal" else (
        "Splenomegaly.",
        "The spleen is enlarged.",
        f"Enlarged spleen measuring {rng.uniform(15, 19):.1f} cm in length.",
        "Marked splenomegaly.",
        "Spleen is enlarged without focal lesion.",
        f"Splenomegaly, craniocaudal length {rng.uniform(15, 19):.0f} cm.",
    ))]
    out["liver"] = [_pick(rng, (
        "The liver is normal in size and attenuation.",
        "Liver unremarkable.",
        "No hepatic steatosis.",
        "Normal liver without focal lesion.",
        "The liver is homogeneous without focal abnormality.",
        "Liver: normal.",
    ) if f.liver == "normal" else (
        "Diffuse hepatic steatosis.",
        "Fatty infiltration of the liver.",
        "The liver is diffusely hypoattenuating, consistent with steatosis.",
        "Fatty liver.",
        "Hepatic steatosis without focal lesion.",
        "Diffusely decreased attenuation of the liver in keeping with fatty infiltration.",
    ))]
    out["kidneys"] = [_kidney_sentence(f, rng)]
    out["bladder"] = [_pick(rng, (
        "The urinary bladder is unremarkable.",
        "Bladder normal.",
        "Urinary bladder is normal in appearance.",
        "The bladder is not distended.",
        "Unremarkable urinary bladder.",
        "Bladder: no abnormality.",
    ) if f.bladder == "normal" else (
        "The urinary bladder is distended.",
        "Markedly distended urinary bladder.",
        "Overdistended bladder.",
        "Distended bladder.",
        "The bladder is full and distended.",
        "Urinary bladder distension.",
    ))]
    if f.phase != "unknown":
        out["phase"] = [_pick(rng, (
            "CT of the abdomen and pelvis without intravenous contrast.",
            "Non-contrast CT abdomen and pelvis.",
            "Unenhanced CT of the abdomen and pelvis.",
            "Technique: axial CT images without IV contrast.",
            "Noncontrast study.",
            "Plain CT of the abdomen.",
        ) if f.phase == "non_contrast" else (
            "CT of the abdomen and pelvis with intravenous contrast in the portal venous phase.",
            "Contrast-enhanced CT, portal venous phase.",
            "Technique: helical CT after IV contrast, portal venous phase.",
            "CECT abdomen and pelvis, venous phase.",
            "Portal venous phase imaging.",
            "CT abdomen/pelvis with IV contrast.",
        ))]
    return out


def _kidney_sentence(f: Findings, rng: np.random.Generator) -> str:
    absent = [side for side in ("left", "right") if getattr(f, f"kidney_{side}") == "absent"]
    if not absent:
        return _pick(rng, (
            "Both kidneys are unremarkable.",
            "Kidneys normal bilaterally.",
            "The kidneys are symmetric without hydronephrosis.",
            "Normal kidneys.",
            "No hydronephrosis; kidneys unremarkable.",
            "Bilateral kidneys are normal in size.",
        ))
    if len(absent) == 2:
        return _pick(rng, ("Status post bilateral nephrectomy.", "Both kidneys are surgically absent."))
    side = absent[0]
    other = "right" if side == "left" else "left"
    return _pick(rng, (
        f"Status post {side} nephrectomy.",
        f"The {side} kidney is surgically absent.",
        f"Absent {side} kidney.",
        f"S/p {side} nephrectomy; the {other} kidney is unremarkable.",
        f"Post-surgical absence of the {side} kidney.",
        f"{side.capitalize()} nephrectomy bed is clear.",
    ))


def write_report(findings: Findings, rng: np.random.Generator) -> str:
    """A free-text report that states `findings` exactly (one sentence per field)."""
    phrases = _phrases(findings, rng)
    technique = phrases.pop("phase", [])
    tumors = phrases.pop("tumors")
    body = [s for v in phrases.values() for s in v]
    order = rng.permutation(len(body))
    body = [body[i] for i in order]
    if rng.random() < 0.5:  # structured: technique, findings, impression (tumours)
        parts = []
        if technique:
            parts.append("TECHNIQUE: " + technique[0])
        parts.append("FINDINGS: " + " ".join(body))
        parts.append("IMPRESSION: " + " ".join(tumors))
        return "\n".join(parts)
    sentences = technique + tumors + body
    if rng.random() < 0.5:
        sentences = technique + body + tumors
    return " ".join(sentences)


def report_sentences(findings: Findings, rng: np.random.Generator) -> dict[str, list[str]]:
    """The sentences `write_report` would draw from, keyed by field (for wording statistics)."""
    return _phrases(findings, rng)

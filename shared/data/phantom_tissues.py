"""Tissue classes of the phantom: ids, label (class of labels.yaml) and HU per contrast phase.

The painter writes tissue ids; labels and the noiseless CT are table look-ups of that map. HU
ranges follow the table of DESIGN.md section 3; each case draws its own value inside the
inner part of a range (`sample_hu`) so measured means stay inside the table after blur and noise.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from shared.labels import default_labels


class T(IntEnum):
    """Tissue ids of the phantom's internal map (uint8)."""

    AIR = 0
    SUBCUT_FAT = 1
    MUSCLE = 2
    FAT = 3  # visceral / retroperitoneal fat: the free space organs are painted into
    LUNG = 4
    BONE = 5  # cancellous
    CORTEX = 6
    DISC = 7
    CSF = 8
    AORTA = 9
    IVC = 10
    VEIN = 11  # portal, splenic, renal veins and iliac vessels
    HEART = 12
    LIVER = 13
    GALLBLADDER = 14
    SPLEEN = 15
    KIDNEY_R_CORTEX = 16
    KIDNEY_R_MEDULLA = 17
    STOMACH_WALL = 18
    STOMACH_FLUID = 19
    STOMACH_GAS = 20
    PANCREAS = 21
    DUODENUM_WALL = 22
    DUODENUM_FLUID = 23
    DUODENUM_GAS = 24
    SB_WALL = 25
    SB_FLUID = 26
    SB_GAS = 27
    COLON_WALL = 28
    COLON_GAS = 29
    COLON_STOOL = 30
    COLON_FLUID = 31
    BLADDER_WALL = 32
    URINE = 33
    TUMOR = 34
    CLIP = 35
    ARTERY = 36  # iliac arteries (aorta-like enhancement, not part of the aorta)
    RIB = 37
    KIDNEY_L_CORTEX = 38
    KIDNEY_L_MEDULLA = 39


N_TISSUES = len(T)

# tissue -> label name (anything not listed is background)
TISSUE_LABEL: dict[T, str] = {
    T.LIVER: "liver", T.SPLEEN: "spleen", T.PANCREAS: "pancreas",
    T.KIDNEY_R_CORTEX: "kidney_right", T.KIDNEY_R_MEDULLA: "kidney_right",
    T.KIDNEY_L_CORTEX: "kidney_left", T.KIDNEY_L_MEDULLA: "kidney_left",
    T.STOMACH_WALL: "stomach", T.STOMACH_FLUID: "stomach", T.STOMACH_GAS: "stomach",
    T.DUODENUM_WALL: "duodenum", T.DUODENUM_FLUID: "duodenum", T.DUODENUM_GAS: "duodenum",
    T.SB_WALL: "small_bowel", T.SB_FLUID: "small_bowel", T.SB_GAS: "small_bowel",
    T.COLON_WALL: "colon", T.COLON_GAS: "colon", T.COLON_STOOL: "colon", T.COLON_FLUID: "colon",
    T.BLADDER_WALL: "urinary_bladder", T.URINE: "urinary_bladder",
    T.TUMOR: "colorectal_tumor",
}

# HU ranges (lo, hi) per phase: (non_contrast, portal_venous); the table of DESIGN.md section 3
HU_RANGES: dict[T, tuple[tuple[float, float], tuple[float, float]]] = {
    T.AIR: ((-1000, -1000), (-1000, -1000)),
    T.SUBCUT_FAT: ((-110, -95), (-110, -95)),
    T.MUSCLE: ((45, 55), (55, 65)),
    T.FAT: ((-95, -85), (-95, -85)),
    T.LUNG: ((-880, -820), (-880, -820)),
    T.BONE: ((170, 280), (180, 290)),
    T.CORTEX: ((800, 1100), (800, 1100)),
    T.DISC: ((70, 90), (75, 95)),
    T.CSF: ((5, 15), (5, 15)),
    T.AORTA: ((38, 45), (155, 195)),
    T.IVC: ((38, 45), (122, 148)),
    T.VEIN: ((38, 45), (140, 180)),
    T.HEART: ((38, 45), (130, 160)),
    T.LIVER: ((56, 64), (101.5, 113.5)),
    T.GALLBLADDER: ((0, 15), (0, 15)),
    T.SPLEEN: ((46, 49), (112, 123)),
    T.KIDNEY_R_CORTEX: ((31.5, 33.5), (165, 177)),
    T.KIDNEY_R_MEDULLA: ((30.5, 34.5), (140, 160)),
    T.KIDNEY_L_CORTEX: ((31.5, 33.5), (165, 177)),
    T.KIDNEY_L_MEDULLA: ((30.5, 34.5), (140, 160)),
    T.STOMACH_WALL: ((40, 40), (90, 90)),
    T.STOMACH_FLUID: ((6, 14), (6, 14)),
    T.STOMACH_GAS: ((-1000, -1000), (-1000, -1000)),
    T.PANCREAS: ((43, 48), (94, 106)),
    T.DUODENUM_WALL: ((40, 40), (90, 90)),
    T.DUODENUM_FLUID: ((5, 15), (5, 15)),
    T.DUODENUM_GAS: ((-1000, -1000), (-1000, -1000)),
    T.SB_WALL: ((31, 39), (81, 99)),
    T.SB_FLUID: ((5, 20), (5, 20)),
    T.SB_GAS: ((-1000, -1000), (-1000, -1000)),
    T.COLON_WALL: ((40, 40), (90, 90)),
    T.COLON_GAS: ((-1000, -1000), (-1000, -1000)),
    T.COLON_STOOL: ((-180, -120), (-180, -120)),
    T.COLON_FLUID: ((5, 20), (5, 20)),
    T.BLADDER_WALL: ((35, 45), (70, 90)),
    T.URINE: ((1, 9), (1, 9)),
    T.TUMOR: ((43, 48), (84, 96)),
    T.CLIP: ((2500, 3000), (2500, 3000)),
    T.ARTERY: ((38, 45), (155, 195)),
    T.RIB: ((350, 550), (350, 550)),
}

# fatty liver replaces the liver range
FATTY_LIVER_HU = ((17, 33), (61.5, 78.5))

# texture amplitude (HU std of a smooth random field) per tissue; stool is mottled
TEXTURE_HU: dict[T, float] = {
    T.SUBCUT_FAT: 6, T.FAT: 8, T.MUSCLE: 5, T.LUNG: 40, T.BONE: 35, T.LIVER: 2.5, T.SPLEEN: 1.5,
    T.KIDNEY_R_CORTEX: 1, T.KIDNEY_R_MEDULLA: 1, T.KIDNEY_L_CORTEX: 1,
    T.KIDNEY_L_MEDULLA: 1, T.PANCREAS: 2, T.COLON_STOOL: 110, T.SB_FLUID: 6,
    T.TUMOR: 2, T.HEART: 4,
}

PHASE_INDEX = {"non_contrast": 0, "portal_venous": 1}


def label_lut() -> np.ndarray:
    """(N_TISSUES,) uint8: tissue id -> class id of data_manifests/labels.yaml."""
    table = default_labels()
    lut = np.zeros(N_TISSUES, dtype=np.uint8)
    for tissue, name in TISSUE_LABEL.items():
        lut[tissue] = table.id_of(name)
    return lut


def sample_hu(rng: np.random.Generator, fatty_liver: bool) -> np.ndarray:
    """(N_TISSUES, 2) float32 HU per tissue and phase (column 0 non-contrast, 1 portal venous).

    Values are drawn uniformly within each range, the same draws whatever the findings (the
    liver draws one uniform per phase and maps it into the normal or the fatty range).
    """
    return hu_table(rng.uniform(size=(N_TISSUES, 2)), fatty_liver)


def expected_hu(fatty_liver: bool) -> np.ndarray:
    """(N_TISSUES, 2) float32: the expectation of `sample_hu` (every range at its midpoint; the
    derived tissues follow as in a draw). What a report that names only the phase and the liver
    state determines; a case's own draw is not in its text."""
    return hu_table(np.full((N_TISSUES, 2), 0.5), fatty_liver)


def hu_table(u: np.ndarray, fatty_liver: bool) -> np.ndarray:
    """(N_TISSUES, 2) float32 HU from uniforms u (N_TISSUES, 2) in [0, 1]: lo + u (hi - lo) per
    tissue and phase, then the tissues tied to others (renal medulla, left kidney, arteries)."""
    out = np.zeros((N_TISSUES, 2), dtype=np.float32)
    for tissue in T:
        ranges = FATTY_LIVER_HU if tissue == T.LIVER and fatty_liver else HU_RANGES[tissue]
        for ph in range(2):
            lo, hi = ranges[ph]
            out[tissue, ph] = lo + u[tissue, ph] * (hi - lo)
    # renal medulla tracks the cortex (corticomedullary difference in the venous phase only)
    out[T.KIDNEY_R_MEDULLA, 0] = out[T.KIDNEY_R_CORTEX, 0]
    out[T.KIDNEY_R_MEDULLA, 1] = out[T.KIDNEY_R_CORTEX, 1] - 14
    out[T.KIDNEY_L_CORTEX] = out[T.KIDNEY_R_CORTEX]
    out[T.KIDNEY_L_MEDULLA] = out[T.KIDNEY_R_MEDULLA]
    out[T.ARTERY] = out[T.AORTA]
    return out


def texture_lut() -> np.ndarray:
    """(N_TISSUES,) float32 texture amplitude (HU) per tissue."""
    lut = np.zeros(N_TISSUES, dtype=np.float32)
    for tissue, amp in TEXTURE_HU.items():
        lut[tissue] = amp
    return lut

"""The procedural abdominal phantom (DESIGN.md section 3): determinism, volumes, HU, anatomy,
tumour sites, noise and findings rates. Default-grid cases are generated once per module."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from shared.data.phantom import (
    NOISE_SIGMA_HU,
    PhantomGrid,
    build_anatomy,
    colon_segment_map,
    generate_case,
    sample_findings,
    site_of_point,
)
from shared.data.phantom_tissues import T
from shared.findings import SITES, Findings, Tumor
from shared.labels import default_labels

L = default_labels()
SMALL = PhantomGrid(shape=(48, 48, 32), spacing=(8.0, 8.0, 12.5))
FULL26 = np.ones((3, 3, 3), bool)

FORCED = {
    10: Findings(tumors=(Tumor("ascending", 45), Tumor("sigmoid", 30)), spleen="enlarged",
                 liver="fatty", kidney_left="absent", bladder="distended", phase="portal_venous"),
    11: Findings(tumors=(Tumor("transverse", 60), Tumor("rectum", 55)), liver="fatty",
                 kidney_right="absent", phase="non_contrast"),
    12: Findings(tumors=(Tumor("descending", 20),), phase="portal_venous"),
    13: Findings(tumors=(Tumor("rectum", 60), Tumor("ascending", 58)), spleen="enlarged",
                 bladder="distended", phase="non_contrast"),
}


@pytest.fixture(scope="module")
def cases():
    """10 noiseless default-grid cases: 6 with sampled findings, 4 with imposed ones (all sites).

    Noiseless so HU means measure the phantom's blurred image, not this draw of the noise (the
    noise test checks the noise is zero-mean with the stated sigma)."""
    out = [generate_case(s, noise=False) for s in range(6)]
    out += [generate_case(s, f, noise=False) for s, f in FORCED.items()]
    return out


def centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World centroid (mm) of a boolean mask."""
    return np.argwhere(mask).mean(0) @ affine[:3, :3].T + affine[:3, 3]


def organ(case, name: str) -> np.ndarray:
    return case.labels == L.id_of(name)


# ---------------------------------------------------------------------------------------------
def test_grid_affine_is_ras_centred():
    g = PhantomGrid()
    aff = g.affine()
    np.testing.assert_allclose(np.diag(aff)[:3], g.spacing)
    centre = aff @ np.array([*((np.array(g.shape) - 1) / 2), 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    np.testing.assert_allclose(np.array(g.shape) * g.spacing, (384, 384, 400))


def test_deterministic_per_seed_and_seeds_differ():
    a, b, c = generate_case(7, grid=SMALL), generate_case(7, grid=SMALL), generate_case(8, grid=SMALL)
    assert a.ct.dtype == np.int16 and a.labels.dtype == np.uint8 and a.ct.shape == SMALL.shape
    np.testing.assert_array_equal(a.ct, b.ct)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.findings == b.findings and a.meta == b.meta
    assert not np.array_equal(a.labels, c.labels) and not np.array_equal(a.ct, c.ct)


def test_findings_change_only_their_organ():
    base = Findings(phase="portal_venous")
    a = generate_case(21, base, grid=SMALL)
    b = generate_case(21, base.replace(spleen="enlarged"), grid=SMALL)
    for name in ("liver", "kidney_left", "kidney_right", "colon"):
        np.testing.assert_array_equal(organ(a, name), organ(b, name))
    assert 2.0 <= organ(b, "spleen").sum() / organ(a, "spleen").sum() <= 3.0


def test_expected_hu_is_the_mean_draw_and_renders_the_same_anatomy():
    """expected_hu = the range midpoints (medulla = cortex - 14 in PV, arteries = aorta); the mean
    of many sample_hu draws converges to it; generate_case(hu=...) keeps labels and noise, only
    the tissue HU change."""
    from shared.data.phantom_tissues import (
        FATTY_LIVER_HU,
        HU_RANGES,
        expected_hu,
        hu_table,
        sample_hu,
    )

    for fatty in (False, True):
        mid = expected_hu(fatty)
        liver = FATTY_LIVER_HU if fatty else HU_RANGES[T.LIVER]
        assert mid[T.LIVER, 0] == np.mean(liver[0]) and mid[T.LIVER, 1] == np.mean(liver[1])
        assert mid[T.SPLEEN, 1] == np.mean(HU_RANGES[T.SPLEEN][1])
        assert mid[T.KIDNEY_L_MEDULLA, 1] == mid[T.KIDNEY_R_CORTEX, 1] - 14 and np.array_equal(mid[T.ARTERY], mid[T.AORTA])
        rng, n = np.random.default_rng(0), 4000
        draws = np.mean([sample_hu(rng, fatty) for _ in range(n)], axis=0)
        width = hu_table(np.ones_like(mid), fatty) - hu_table(np.zeros_like(mid), fatty)
        assert (np.abs(draws - mid) <= 4 * width / np.sqrt(12 * n) + 1e-3).all()  # 4 standard errors
    f = Findings(phase="portal_venous", liver="fatty")
    own, mid_case = generate_case(5, f, grid=SMALL), generate_case(5, f, grid=SMALL, hu=expected_hu(True))
    np.testing.assert_array_equal(own.labels, mid_case.labels)
    assert mid_case.meta["hu"]["liver"] == np.mean(FATTY_LIVER_HU[1]) != own.meta["hu"]["liver"]
    inner = ndimage.binary_erosion(organ(own, "liver"), iterations=2)  # same texture + noise: a constant shift
    d = own.ct[inner].astype(float) - mid_case.ct[inner]
    assert inner.sum() > 20 and d.std() < 1.0
    assert abs(d.mean() - (own.meta["hu"]["liver"] - mid_case.meta["hu"]["liver"])) < 1.0
    with pytest.raises(ValueError, match="N_TISSUES"):
        generate_case(5, f, grid=SMALL, hu=np.zeros((3, 2)))


def test_other_grids_work():
    for grid in (SMALL, PhantomGrid((32, 32, 16), (12.0, 12.0, 25.0))):
        case = generate_case(3, Findings(tumors=(Tumor("sigmoid", 40),), phase="non_contrast"), grid=grid)
        present = set(np.unique(case.labels))
        assert {L.id_of(n) for n in ("liver", "spleen", "colon", "urinary_bladder")} <= present


# ---------------------------------------------------------------------------------------------
def test_organ_volumes_within_table(cases):
    for case in cases:
        v, f = case.meta["volumes_ml"], case.findings
        assert 1200 <= v["liver"] <= 1800, (case.seed, v)
        lo, hi = (300, 750) if f.spleen == "enlarged" else (150, 250)
        assert lo <= v["spleen"] <= hi, (case.seed, v)
        for side in ("left", "right"):
            if getattr(f, f"kidney_{side}") == "absent":
                assert v[f"kidney_{side}"] == 0
            else:
                assert 120 <= v[f"kidney_{side}"] <= 170, (case.seed, v)
        assert 300 <= v["stomach"] <= 800 and 60 <= v["pancreas"] <= 100, (case.seed, v)
        lo, hi = (200, 600) if f.bladder == "distended" else (100, 300)
        assert lo <= v["urinary_bladder"] <= hi, (case.seed, v)
        assert v["duodenum"] > 20 and v["small_bowel"] > 200 and v["colon"] > 300, (case.seed, v)


def _eroded_mean(case, mask: np.ndarray, iterations: int = 2) -> float:
    core = ndimage.binary_erosion(mask, iterations=iterations)
    assert core.sum() > 20
    return float(case.ct[core].mean())


def test_organ_hu_means_within_table(cases):
    seen = set()
    for case in cases:
        pv = case.findings.phase == "portal_venous"
        fatty = case.findings.liver == "fatty"
        liver = ((60, 80) if pv else (15, 35)) if fatty else ((100, 115) if pv else (55, 65))
        expect = {"liver": liver, "spleen": (110, 125) if pv else (45, 50),
                  "pancreas": (90, 110) if pv else (40, 50), "urinary_bladder": (0, 10)}
        for side in ("left", "right"):
            if getattr(case.findings, f"kidney_{side}") == "present":
                expect[f"kidney_{side}"] = (150, 180) if pv else (30, 35)
        for name, (lo, hi) in expect.items():
            m = _eroded_mean(case, organ(case, name))
            assert lo <= m <= hi, (case.seed, name, case.findings.phase, m)
        seen.add((pv, fatty))
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def test_vessel_and_tumour_hu(cases):
    for case in cases[6:8]:  # PV and NC with tumours
        pv = case.findings.phase == "portal_venous"
        tissue = build_anatomy(case.seed, case.findings).tissue
        aorta = _eroded_mean(case, tissue == T.AORTA, 1)
        ivc = _eroded_mean(case, tissue == T.IVC, 1)
        assert (150 <= aorta <= 200) if pv else (35 <= aorta <= 45), aorta
        assert (120 <= ivc <= 150) if pv else (35 <= ivc <= 45), ivc
        tumour = _eroded_mean(case, organ(case, "colorectal_tumor"), 1)
        assert (80 <= tumour <= 100) if pv else (40 <= tumour <= 50), tumour
        # walls of hollow organs (unblurred table values; too thin to measure in the image)
        hu = case.meta["hu"]
        assert (80 <= hu["sb_wall"] <= 100) if pv else (30 <= hu["sb_wall"] <= 40)
        assert hu["colon_gas"] == -1000 and 5 <= hu["stomach_fluid"] <= 15


# ---------------------------------------------------------------------------------------------
def test_anatomical_relations(cases):
    for case in cases:
        aff = case.affine
        c = {n: centroid(organ(case, n), aff) for n in ("liver", "spleen", "urinary_bladder", "stomach")}
        assert c["liver"][0] > 40 and c["spleen"][0] < -40, case.seed  # patient right = +x
        assert c["stomach"][0] < 0 and c["liver"][2] > c["urinary_bladder"][2] + 150
        if case.findings.kidney_left == "present" == case.findings.kidney_right:
            zl = centroid(organ(case, "kidney_left"), aff)[2]
            zr = centroid(organ(case, "kidney_right"), aff)[2]
            assert 8 <= zl - zr <= 22, (case.seed, zl, zr)
            assert centroid(organ(case, "kidney_right"), aff)[0] > 0 > centroid(organ(case, "kidney_left"), aff)[0]
        seg = colon_segment_map(case.labels, aff, case.meta["colon"])
        rectum = centroid(seg == SITES.index("rectum"), aff)
        assert c["urinary_bladder"][1] > rectum[1] + 20, case.seed  # bladder anterior to rectum


def test_aorta_left_of_ivc_and_spine_posterior(cases):
    case = cases[0]
    tissue = build_anatomy(case.seed, case.findings).tissue
    aorta, ivc = centroid(tissue == T.AORTA, case.affine), centroid(tissue == T.IVC, case.affine)
    assert aorta[0] < 0 < ivc[0] and aorta[0] < ivc[0] - 20
    bone = centroid(tissue == T.BONE, case.affine)
    assert bone[1] < aorta[1] - 15 and abs(bone[0]) < 5  # spine: midline, posterior to the aorta


def test_nothing_outside_the_body(cases):
    for case in cases[:4]:
        body = np.stack([ndimage.binary_fill_holes(case.ct[:, :, k] > -400) for k in range(case.ct.shape[2])], -1)
        body = ndimage.binary_closing(body, iterations=2) | body
        assert not np.any((case.labels > 0) & ~body), case.seed
        edge = np.concatenate([case.ct[0].ravel(), case.ct[-1].ravel(), case.ct[:, 0].ravel(), case.ct[:, -1].ravel()])
        assert abs(float(np.median(edge)) + 1000) < 5 and np.all(edge < -900)


def test_colon_is_one_tube_in_segment_order(cases):
    for case in cases:
        gut = organ(case, "colon") | organ(case, "colorectal_tumor")
        _, n = ndimage.label(gut, structure=FULL26)
        assert n == 1, (case.seed, n)
        seg = colon_segment_map(case.labels, case.affine, case.meta["colon"])
        assert set(np.unique(seg[gut])) == set(range(5)), case.seed
        cen = {s: centroid(seg == i, case.affine) for i, s in enumerate(SITES)}
        assert cen["ascending"][0] > 40 and cen["descending"][0] < -40, case.seed
        assert cen["transverse"][1] > max(cen["ascending"][1], cen["descending"][1]), case.seed
        assert cen["rectum"][2] < min(cen[s][2] for s in SITES[:4]) and abs(cen["rectum"][0]) < 20
        assert cen["sigmoid"][2] < cen["descending"][2] < cen["transverse"][2] + 60
        # consecutive segments touch; the arclength order follows the course
        for i in range(4):
            near = ndimage.binary_dilation(seg == i, structure=FULL26) & (seg == i + 1)
            assert near.any(), (case.seed, SITES[i])


def test_tumours_on_named_sites_with_their_size(cases):
    n_checked = 0
    for case in cases:
        tumour = organ(case, "colorectal_tumor")
        lab, n = ndimage.label(tumour, structure=FULL26)
        assert n == len(case.findings.tumors), (case.seed, n)
        seg = colon_segment_map(case.labels, case.affine, case.meta["colon"])
        found = {}
        for k in range(1, n + 1):
            comp = lab == k
            site = site_of_point(centroid(comp, case.affine), case.meta["colon"])
            assert SITES[int(np.bincount(seg[comp]).argmax())] == site
            found[site] = (6 * comp.sum() * PhantomGrid().voxel_ml * 1000 / np.pi) ** (1 / 3)
        for t in case.findings.tumors:
            assert abs(found[t.site] - t.size_mm) <= 0.15 * t.size_mm, (case.seed, t, found)
            n_checked += 1
    assert n_checked >= 8


# ---------------------------------------------------------------------------------------------
def test_noise_sigma_and_correlation(cases):
    clean = cases[1]
    case = generate_case(clean.seed, clean.findings)
    np.testing.assert_array_equal(clean.labels, case.labels)
    resid = case.ct.astype(np.float64) - clean.ct
    inside = (clean.ct > -900) & (clean.ct < 1500)  # away from the -1024 clip
    assert abs(resid[inside].std() / NOISE_SIGMA_HU - 1) < 0.05
    assert abs(resid[inside].mean()) < 0.5
    liver = ndimage.binary_erosion(organ(case, "liver"), iterations=2)
    assert abs(resid[liver].std() / NOISE_SIGMA_HU - 1) < 0.1
    r = resid - resid.mean()
    for axis in (0, 2):
        a = np.moveaxis(r, axis, 0)
        rho = float((a[1:] * a[:-1]).mean() / (a * a).mean())
        assert 0.1 < rho < 0.95, (axis, rho)


def test_findings_sampling_rates():
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng) for _ in range(2000)]
    n_t = np.array([len(f.tumors) for f in draws])
    for k, p in enumerate((0.25, 0.55, 0.20)):
        assert abs((n_t == k).mean() - p) < 0.04
    sites = [t.site for f in draws for t in f.tumors]
    for s in SITES:
        assert abs(sites.count(s) / len(sites) - 0.2) < 0.04
    assert all(len(f.tumor_sites) == len(f.tumors) for f in draws)
    assert all(20 <= t.size_mm <= 60 for f in draws for t in f.tumors)
    rate = lambda cond: np.mean([cond(f) for f in draws])  # noqa: E731
    assert abs(rate(lambda f: f.spleen == "enlarged") - 0.15) < 0.03
    assert abs(rate(lambda f: f.liver == "fatty") - 0.20) < 0.03
    assert abs(rate(lambda f: "absent" in (f.kidney_left, f.kidney_right)) - 0.08) < 0.025
    assert not any(f.kidney_left == f.kidney_right == "absent" for f in draws)
    assert abs(rate(lambda f: f.bladder == "distended") - 0.15) < 0.03
    assert abs(rate(lambda f: f.phase == "portal_venous") - 0.60) < 0.04
    assert {f.phase for f in draws} == {"portal_venous", "non_contrast"}


# ---------------------------------------------------------------------------------------------
# Pelvic bones and hip muscles: present, bilateral, and never touching the labels
# label hashes (sha256[:16]) of generate_case(seed) for seeds 0..4 at the default grid, computed
# before the pelvis was added: the pelvis paints unlabelled tissue only
LABEL_SHA_BEFORE_PELVIS = ("295931f04be7a4f9", "89cbe73fda01ddf8", "8ade4023ec2c9245",
                           "eeaade1ea140bf9c", "4cdffd115acf8ab8")


def test_pelvis_leaves_labels_unchanged(cases):
    import hashlib

    from shared.data.phantom_tissues import label_lut

    for s in range(5):
        assert hashlib.sha256(cases[s].labels.tobytes()).hexdigest()[:16] == LABEL_SHA_BEFORE_PELVIS[s]
    for grid in (SMALL, PhantomGrid()):
        for s in range(5) if grid == SMALL else (0, 12):
            f = FORCED.get(s, sample_findings(np.random.default_rng(s)))
            with_p = build_anatomy(s, f, grid)
            without = build_anatomy(s, f, grid, pelvis=False)
            assert np.array_equal(label_lut()[with_p.tissue], label_lut()[without.tissue])
            changed = with_p.tissue != without.tissue
            assert changed.any()
            # only unlabelled soft tissue became bone / muscle
            assert set(np.unique(without.tissue[changed])) <= {T.FAT, T.MUSCLE, T.SUBCUT_FAT}
            assert set(np.unique(with_p.tissue[changed])) <= {T.BONE, T.CORTEX, T.MUSCLE}


def test_pelvic_bones_bilateral_in_lowest_slices(cases):
    for case in cases:
        ct = case.ct
        nx = ct.shape[0]
        x_mm = (np.arange(nx) - 0.5 * (nx - 1)) * 3.0
        lateral = np.abs(x_mm) > 55  # beyond the sacrum: iliac bones, acetabula, femora
        low = ct[:, :, :6] > 500  # lowest 30 mm
        right = low[x_mm > 0][lateral[x_mm > 0]].sum()
        left = low[x_mm < 0][lateral[x_mm < 0]].sum()
        assert right > 150 and left > 150, (case.seed, right, left)
        assert 0.7 < right / left < 1.4, (case.seed, right, left)
        # iliac wings at mid-pelvic levels (z ~ -100 mm), both sides
        k = int(round((-100 + 197.5) / 5))
        mid = ct[:, :, k] > 500
        assert mid[x_mm > 55].sum() > 10 and mid[x_mm < -55].sum() > 10, case.seed
        # femoral heads where hips are: lateral, at the lowest slices
        head = case.meta["pelvis"]["femoral_head_mm"]
        assert 80 < head[0] < 115 and -200 < head[2] < -170

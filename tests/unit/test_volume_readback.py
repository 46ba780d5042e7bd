"""findings_from_volume: constructed edits and agreement with the phantom's ground truth."""

import numpy as np
import pytest

from shared.data.build import case_seed, split_of
from shared.data.downsample import downsample_labels
from shared.data.phantom import generate_case
from shared.findings import FIELDS, Findings, Tumor
from shared.text.volume import findings_from_volume

TUMOR, COLON, KID_L, KID_R = 11, 9, 3, 2


def _lowres(case):
    """Labels at the stage-1 grid (64 x 64 x 40) with the matching affine."""
    low = downsample_labels(case.labels, (64, 64, 40), 12, priority_ids=[TUMOR]).numpy()
    aff = case.affine.copy()
    aff[:3, :3] *= 2
    aff[:3, 3] += 0.5 * np.diag(case.affine)[:3]
    return low, aff


@pytest.fixture(scope="module")
def sigmoid_case():
    f = Findings(tumors=(Tumor("sigmoid", 40),), phase="portal_venous")
    return generate_case(5, f)


def test_reads_ground_truth(sigmoid_case):
    c = sigmoid_case
    got = findings_from_volume(c.labels, c.affine, c.ct)
    assert got == c.findings
    assert got.tumors[0].size_mm == pytest.approx(40, rel=0.15)


def test_moving_tumour_changes_site(sigmoid_case):
    c = sigmoid_case
    labels = c.labels.copy()
    labels[labels == TUMOR] = COLON
    # paint a 30 mm ball on the ascending colon: the colon voxel furthest to the patient's right
    colon = np.argwhere(labels == COLON)
    world = colon @ c.affine[:3, :3].T + c.affine[:3, 3]
    mid = np.abs(world[:, 2] - np.median(world[world[:, 0] > 60, 2])) < 20
    centre = world[mid][np.argmax(world[mid][:, 0])] - [10, 0, 0]
    grid = np.indices(labels.shape).reshape(3, -1).T @ c.affine[:3, :3].T + c.affine[:3, 3]
    ball = (np.linalg.norm(grid - centre, axis=1) <= 15).reshape(labels.shape) & (labels == COLON)
    labels[ball] = TUMOR
    got = findings_from_volume(labels, c.affine)
    assert got.tumor_sites == {"ascending"}


def test_mirror_swaps_ascending_and_descending():
    for site, mirrored in (("ascending", "descending"), ("descending", "ascending")):
        c = generate_case(11, Findings(tumors=(Tumor(site, 35),)))
        assert findings_from_volume(c.labels, c.affine).tumor_sites == {site}
        flipped = findings_from_volume(c.labels[::-1].copy(), c.affine)
        assert flipped.tumor_sites == {mirrored}


def test_removed_kidney_reads_absent(sigmoid_case):
    c = sigmoid_case
    labels = c.labels.copy()
    labels[labels == KID_L] = 0
    got = findings_from_volume(labels, c.affine)
    assert (got.kidney_left, got.kidney_right) == ("absent", "present")
    # a kidney label painted on the wrong side is read by world position, not by name
    labels = c.labels.copy()
    labels[labels == KID_L] = KID_R
    got = findings_from_volume(labels, c.affine)
    assert (got.kidney_left, got.kidney_right) == ("present", "present")


def test_tumour_off_the_colon_has_no_site(sigmoid_case):
    c = sigmoid_case
    labels = c.labels.copy()
    labels[labels == TUMOR] = COLON
    liver = np.argwhere(labels == 4)
    centre = liver.mean(0).round().astype(int)
    labels[tuple(centre[:, None] + np.indices((5, 5, 3)).reshape(3, -1) - [[2], [2], [1]])] = TUMOR
    got = findings_from_volume(labels, c.affine)
    assert got.tumor_presence and got.tumor_sites == frozenset() and got.tumors[0].site is None


def test_agreement_on_phantom_test_split():
    """>= 98% per field on test-split phantoms, full grid with CT and stage-1 grid without."""
    seeds = [case_seed(0, i) for i in range(400) if split_of(i) == "test"][:24]
    hits = {k: 0 for k in FIELDS}
    hits_low = {k: 0 for k in FIELDS}
    for s in seeds:
        c = generate_case(s)
        for k, v in c.findings.agreement(findings_from_volume(c.labels, c.affine, c.ct)).items():
            hits[k] += v
        low, aff = _lowres(c)
        for k, v in c.findings.agreement(findings_from_volume(low, aff)).items():
            hits_low[k] += v
    n = len(seeds)
    assert all(hits[k] / n >= 0.98 for k in FIELDS), hits
    mask_fields = [k for k in FIELDS if k not in ("phase", "liver")]
    assert all(hits_low[k] / n >= 0.98 for k in mask_fields), hits_low

import json

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.findings import (
    FIELDS,
    SITE_NAMES,
    SITES,
    Findings,
    FindingsError,
    Tumor,
    findings_json_schema,
    normalize_site,
)

tumors = st.lists(
    st.builds(Tumor, site=st.sampled_from(SITES), size_mm=st.integers(5, 90).map(float)),
    max_size=3,
)
findings_st = st.builds(
    Findings,
    tumors=tumors.map(tuple),
    spleen=st.sampled_from(["normal", "enlarged"]),
    liver=st.sampled_from(["normal", "fatty"]),
    kidney_left=st.sampled_from(["present", "absent"]),
    kidney_right=st.sampled_from(["present", "absent"]),
    bladder=st.sampled_from(["normal", "distended"]),
    phase=st.sampled_from(["non_contrast", "portal_venous", "unknown"]),
)


@given(findings_st)
def test_dict_and_json_round_trip_and_schema(f):
    d = f.to_dict()
    assert Findings.from_dict(d) == f
    assert Findings.from_json(f.to_json()) == f
    jsonschema.validate(json.loads(f.to_json()), findings_json_schema())


@given(findings_st, findings_st)
def test_summary_is_canonical(a, b):
    # equal findings <-> equal summaries (sizes compared after rounding to mm)
    same = a.to_dict() | {"other": ""} == b.to_dict() | {"other": ""}
    assert (a.summary() == b.summary()) == same or not same and a.summary() != b.summary()
    assert a.summary() == Findings.from_dict(a.to_dict()).summary()


def test_summary_text():
    f = Findings(tumors=(Tumor("sigmoid", 40), Tumor("ascending", 22.4)), spleen="enlarged",
                 kidney_right="absent", phase="portal_venous")
    assert f.summary() == (
        "tumor: ascending colon 22 mm, sigmoid colon 40 mm. spleen: enlarged. liver: normal. "
        "kidneys: right absent. bladder: normal. phase: portal venous."
    )
    assert Findings().summary().startswith("tumor: none.")


def test_tumor_order_does_not_matter():
    a = Findings(tumors=(Tumor("rectum", 30), Tumor("transverse", 25)))
    b = Findings(tumors=(Tumor("transverse", 25), Tumor("rectum", 30)))
    assert a == b and a.tumor_sites == {"rectum", "transverse"}


@pytest.mark.parametrize(
    "name, site",
    [("Caecum", "ascending"), ("hepatic flexure", "ascending"), ("ileocecal", "ascending"),
     ("splenic flexure", "descending"), ("rectosigmoid", "sigmoid"), ("rectal", "rectum"),
     ("Sigmoid colon", "sigmoid"), ("transverse colon", "transverse"), ("descending", "descending")],
)
def test_site_mapping(name, site):
    assert normalize_site(name) == site


def test_site_mapping_covers_design_table():
    assert set(SITE_NAMES.values()) == set(SITES)
    with pytest.raises(FindingsError, match="unknown site"):
        normalize_site("appendix")


@pytest.mark.parametrize(
    "data, field",
    [({"spleen": "huge"}, "spleen"), ({"tumors": [{"site": "liver"}]}, "tumors"),
     ({"tumors": [{"site": "rectum", "size_mm": -3}]}, "size_mm"), ({"colour": 1}, "colour"),
     ({"phase": "arterial"}, "phase")],
)
def test_bad_dicts_name_the_field(data, field):
    with pytest.raises(FindingsError, match=field):
        Findings.from_dict(data)


def test_agreement_fields():
    a = Findings(tumors=(Tumor("sigmoid", 40),), phase="portal_venous")
    b = Findings(tumors=(Tumor("sigmoid", 25),), phase="non_contrast")
    agree = a.agreement(b)
    assert set(agree) == set(FIELDS)
    assert agree["tumor_sites"] and agree["tumor_presence"] and not agree["phase"]
    assert not a.agreement(Findings())["tumor_presence"]

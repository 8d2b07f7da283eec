"""A lab's rules file: read with its mistakes named, matched against real sidecars, obeyed
before ReproIn and the classification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.bids.entities import BidsName
from shared.bids.naming import name_series
from shared.bids.rules import Rules, RulesError
from tests.bids.converted import Converted, named, renamed

pytestmark = pytest.mark.shared_setup()

T1W = "siemens_xa30_t1w_3d_classic"  # ReproIn-named anat-T1w_acq-tfl
T1W_IMAGE_TYPE = ["ORIGINAL", "PRIMARY", "M", "DIS2D", "MFSPLIT", "MAGNITUDE"]


def rules(*descriptions: dict[str, Any], **options: Any) -> Rules:
    return Rules.parse({"descriptions": list(descriptions), **options})


def t1w_rule(criteria: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"datatype": "anat", "suffix": "T1w", "criteria": criteria, **more}


def test_a_rule_overrides_the_reproin_name(converted: Converted) -> None:
    lab = rules(
        {"datatype": "func", "suffix": "bold", "criteria": {"SeriesDescription": "*bold*"}},
        t1w_rule(
            {
                "SeriesDescription": "anat-T1w*",
                "EchoTime": 0.00241,
                "ImageType": T1W_IMAGE_TYPE,
            },
            custom_entities="acq-highres_run-2",
        ),
    )
    naming = name_series(converted(T1W), lab)
    assert naming.names == (BidsName("anat", "T1w", (("acq", "highres"), ("run", "2"))),)
    assert naming.how == "rules file: descriptions[1]"


def test_first_matching_description_wins(converted: Converted) -> None:
    lab = rules(
        t1w_rule({"ProtocolName": "anat-*"}, custom_entities={"acq": "first"}),
        t1w_rule({"ProtocolName": "anat-*"}, custom_entities={"acq": "second"}),
    )
    series = converted(T1W)
    assert lab.match(series, series.outputs[0]) == (BidsName("anat", "T1w", (("acq", "first"),)), 0)


# criteria -> whether the real T1w sidecar (and its 1 volume, no gradient table) meets them
CRITERIA = [
    ({"SeriesDescription": "anat-T1w_acq-tfl"}, True),
    ({"SeriesDescription": "ANAT-T1W*"}, False),  # case-sensitive, as dcm2bids
    ({"SeriesDescription": "*T1w*", "EchoTime": 0.00241}, True),
    ({"EchoTime": 0.0024100001}, True),  # within a millionth
    ({"EchoTime": 0.00242}, False),
    ({"EchoTime": {"gt": 0.002, "lt": 0.003}}, True),
    ({"EchoTime": {"gte": 0.00241, "lte": 0.00241}}, True),
    ({"InversionTime": {"gt": 1.5}}, False),
    ({"ImageType": T1W_IMAGE_TYPE}, True),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "M", "*", "*", "MAGNITUDE"]}, True),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "*"]}, False),  # same length, as dcm2bids
    ({"ImageType": "ORIGINAL*"}, False),  # a list is matched by a list
    ({"SeriesNumber": {"any": [3, 4, 5]}}, False),
    ({"MRAcquisitionType": {"any": ["2D", "3D"]}}, True),
    ({"FlipAngle": 9}, True),
    ({"FlipAngle": "9"}, True),  # a glob matches the value's text, as dcm2bids
    ({"FlipAngle": "9*"}, True),
    ({"EchoTrainLength": 2}, False),
    ({"volumes": 1, "diffusion": False}, True),
    ({"volumes": {"gt": 1}}, False),
    ({"NoSuchField": "*"}, False),  # a field the sidecar lacks matches nothing
]


@pytest.mark.parametrize(("criteria", "matches"), CRITERIA)
def test_criteria(converted: Converted, criteria: dict[str, Any], matches: bool) -> None:
    series = converted(T1W)
    found = rules(t1w_rule(criteria)).match(series, series.outputs[0])
    assert (found is not None) is matches


def test_case_insensitive_when_the_file_says_so(converted: Converted) -> None:
    series = converted(T1W)
    lab = rules(t1w_rule({"SeriesDescription": "ANAT-T1W*"}), case_sensitive=False)
    assert lab.match(series, series.outputs[0]) is not None


def test_outputs_no_rule_matches_are_named_as_without_rules(converted: Converted) -> None:
    # The lab names the first echo's magnitude itself; the second keeps its classification.
    lab = rules(
        {
            "datatype": "fmap",
            "suffix": "magnitude1",
            "criteria": {"SequenceName": "*fm2d2r", "EchoNumber": 1},
            "custom_entities": "acq-lab",
        }
    )
    series = converted("siemens_xa30_fieldmap_magnitude")
    naming = name_series(series, lab)
    assert named(series, lab) == [
        "fmap/sub-S_ses-T_acq-lab_magnitude1",
        "fmap/sub-S_ses-T_magnitude2",
    ]
    assert naming.how.startswith("rules file: descriptions[0] (")
    assert "; the other outputs by classified: dual-echo gradient-echo field map" in naming.how


def test_a_rule_can_place_what_the_classification_leaves_over(converted: Converted) -> None:
    series = converted("d2n_hitachi_mr")
    assert name_series(series, Rules()).names is None
    lab = rules({"datatype": "anat", "suffix": "PDw", "criteria": {"ScanningSequence": "SE"}})
    assert named(series, lab) == ["anat/sub-S_ses-T_PDw"]


def test_outputs_left_over_beside_matched_ones_leave_the_series_over(
    converted: Converted,
) -> None:
    # The rule names the map in Hz; the magnitude goes by the protocol name, which is
    # a ReproIn name without the suffix anat needs.
    series = renamed(converted("philips_enhanced_fieldmap"), "anat_acq-b0")
    lab = rules({"datatype": "fmap", "suffix": "fieldmap", "criteria": {"EchoNumber": 2}})
    naming = name_series(series, lab)
    assert naming.names is None
    assert naming.how == (
        f"no rule of the rules file matches {series.outputs[0].nifti}, and ReproIn protocol "
        "name 'anat_acq-b0': anat needs its suffix in the name (anat-T1w, anat-T2w, anat-FLAIR)"
    )


BAD = [
    ([], "a rules file is a JSON object with a 'descriptions' list"),
    ({}, "'descriptions' must be a list of descriptions"),
    ({"descriptions": {}}, "'descriptions' must be a list of descriptions"),
    ({"descriptions": [], "search_method": "re"}, "unknown key(s) ['search_method']"),
    ({"descriptions": [], "case_sensitive": "no"}, "'case_sensitive' must be true or false"),
    ({"descriptions": ["T1w"]}, "descriptions[0]: a description is a JSON object"),
    (
        {"descriptions": [{"datatype": "anat", "criteria": {"EchoTime": 1}}]},
        "descriptions[0].suffix: required, a string",
    ),
    (
        {"descriptions": [t1w_rule({"EchoTime": 1}), {"datatype": "anat", "suffix": "T1w"}]},
        "descriptions[1].criteria: required, an object naming at least one field",
    ),
    ({"descriptions": [t1w_rule({})]}, "descriptions[0].criteria: required"),
    (
        {"descriptions": [{"datatype": "ct", "suffix": "T1w", "criteria": {"a": 1}}]},
        "descriptions[0]: not a BIDS name: datatype 'ct' is not one of",
    ),
    (
        {"descriptions": [{"datatype": "anat", "suffix": "T1w_x", "criteria": {"a": 1}}]},
        "descriptions[0]: not a BIDS name: suffix 'T1w_x' is not letters and digits",
    ),
    (
        {"descriptions": [t1w_rule({"a": 1}, custom_entities="acq-high_res")]},
        "descriptions[0].custom_entities: 'res' is not <key>-<value>",
    ),
    (
        {"descriptions": [t1w_rule({"a": 1}, custom_entities="run-two")]},
        "descriptions[0]: not a BIDS name: run-two: not a BIDS run value",
    ),
    (
        {"descriptions": [t1w_rule({"a": 1}, custom_entities={"ses": "1"})]},
        "descriptions[0]: not a BIDS name: entity 'ses' is not one BIDS names files by",
    ),
    (
        {"descriptions": [t1w_rule({"a": 1}, custom_entities={"acq": None})]},
        "descriptions[0].custom_entities.acq: a string or a number",
    ),
    (
        {"descriptions": [t1w_rule({"EchoTime": {"gt": "0.1"}})]},
        "descriptions[0].criteria.EchoTime.gt: '0.1' is not a number",
    ),
    (
        {"descriptions": [t1w_rule({"EchoTime": {"between": [1, 2]}})]},
        "descriptions[0].criteria.EchoTime: ['between'] not understood",
    ),
    (
        {"descriptions": [t1w_rule({"ImageType": {"any": []}})]},
        "descriptions[0].criteria.ImageType.any: a non-empty list of patterns",
    ),
    (
        {"descriptions": [t1w_rule({"ImageType": ["ORIGINAL", None]})]},
        "descriptions[0].criteria.ImageType[1]: None is not a pattern",
    ),
    (
        {"descriptions": [t1w_rule({"ImageType": [["ORIGINAL"]]})]},
        "descriptions[0].criteria.ImageType[0]: ['ORIGINAL'] is not a pattern",
    ),
    (
        {"descriptions": [t1w_rule({"ImageType": []})]},
        "descriptions[0].criteria.ImageType: an empty list matches nothing",
    ),
    (
        {"descriptions": [t1w_rule({"a": 1}, sidecar_change={})]},
        "descriptions[0]: unknown key(s) ['sidecar_change']",
    ),
    ({"descriptions": [t1w_rule({"a": 1}, id=3)]}, "descriptions[0].id: a string"),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_bad_rules_are_refused_with_where_and_why(data: object, message: str) -> None:
    with pytest.raises(RulesError) as refused:
        Rules.parse(data)
    assert str(refused.value).startswith(message)


def test_dcm2bids_id_and_sidecar_changes_are_kept() -> None:
    lab = rules(t1w_rule({"a": 1}, id="t1", sidecar_changes={"TaskName": "x"}))
    assert (lab.rules[0].id, lab.rules[0].sidecar_changes) == ("t1", {"TaskName": "x"})


def test_load(tmp_path: Path) -> None:
    assert Rules.load(tmp_path / "bids-rules.json") == Rules()  # none written: no rules
    path = tmp_path / "bids-rules.json"
    path.write_text(json.dumps({"descriptions": [t1w_rule({"EchoTime": 0.00241})]}))
    assert [r.name for r in Rules.load(path).rules] == [BidsName("anat", "T1w")]
    path.write_text('{"descriptions": [')
    with pytest.raises(RulesError, match=r"^bids-rules.json is not JSON in UTF-8: "):
        Rules.load(path)
    path.write_bytes(b'{"descriptions": ["\xff"]}')
    with pytest.raises(RulesError, match=r"^bids-rules.json is not JSON in UTF-8: "):
        Rules.load(path)

"""QIDO-RS searches, through dicomweb-client, over the catalog the real pipeline filled from
the whole test data (SQLite and PostgreSQL). What each search should find is worked out from
the test data's own headers, not from the catalog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from requests import HTTPError

from shared.naming import physician_folder
from tests.api.dicomweb import archived, dicomweb, uid_of
from tests.api.pipeline import Api, StudyFacts, study_facts

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup("api", shared_by="tests.api.conftest.api")]

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def _found(results: list[dict[str, Any]], tag: str = STUDY_UID) -> list[str]:
    return [uid_of(result, tag) for result in results]


def _expected(condition: Callable[[StudyFacts], bool]) -> set[str]:
    return {uid for uid, facts in study_facts().items() if condition(facts)}


def _studies(api: Api, **filters: Any) -> set[str]:
    results = dicomweb(api).client.search_for_studies(search_filters=filters)
    found = _found(results)
    assert len(found) == len(set(found)), "a study listed twice"
    return set(found)


def test_every_study_is_found_with_its_attributes_and_counts(api: Api) -> None:
    results = dicomweb(api).client.search_for_studies()
    by_uid = {uid_of(result, STUDY_UID): result for result in results}
    assert set(by_uid) == set(study_facts())
    for uid, facts in study_facts().items():
        found = pydicom.Dataset.from_json(by_uid[uid])
        assert str(found.PatientID) in facts.patient_ids
        # One name per patient ID in the catalog: any of the names its studies were sent with.
        names = {
            name
            for other in study_facts().values()
            if other.patient_ids & facts.patient_ids
            for name in other.patient_names
        }
        assert str(found.get("PatientName", "")) in names
        assert (found.get("StudyDate") or "") in facts.dates
        modalities = by_uid[uid].get("00080061", {}).get("Value", [])
        assert set(modalities) == facts.modalities - {""}
        assert found.NumberOfStudyRelatedSeries == len(facts.series)
        assert found.NumberOfStudyRelatedInstances == len(facts.instances)
        assert found.RetrieveURL.endswith(f"/dicomweb/studies/{uid}")
        assert found.InstanceAvailability == "ONLINE"


def test_a_patient_name_matches_with_wildcards_in_any_case(api: Api) -> None:
    name = max(
        (n for facts in study_facts().values() for n in facts.patient_names if len(n) > 4),
        key=lambda n: sum(n in f.patient_names for f in study_facts().values()),
    )
    exact = _expected(lambda f: name in f.patient_names)
    assert _studies(api, PatientName=name) == exact
    assert _studies(api, PatientName=name.lower()) == exact  # names match in any case
    assert _studies(api, PatientName=name[:3] + "*") == _expected(
        lambda f: any(n.lower().startswith(name[:3].lower()) for n in f.patient_names)
    )
    one_letter = name[0] + "?" + name[2:]  # ? stands for one character
    assert _studies(api, PatientName=one_letter) >= exact
    assert _studies(api, **{"00100010": name}) == exact  # by tag


def test_ids_accessions_descriptions_and_physicians_match(api: Api) -> None:
    facts = next(f for f in study_facts().values() if "" not in f.accessions | f.patient_ids)
    patient, accession = next(iter(facts.patient_ids)), next(iter(facts.accessions))
    assert _studies(api, PatientID=patient) == _expected(lambda f: patient in f.patient_ids)
    assert _studies(api, AccessionNumber=accession) == _expected(
        lambda f: accession in f.accessions
    )
    described = next(f for f in study_facts().values() if any(d.strip() for d in f.descriptions))
    text = next(d for d in described.descriptions if d.strip())
    by_text = _expected(lambda f: text in f.descriptions)
    assert _studies(api, StudyDescription=text) == by_text
    # Text other than names matches in its own case, unless fuzzy matching is asked for.
    if text.lower() != text:
        assert not _studies(api, StudyDescription=text.lower()) & by_text
        results = dicomweb(api).client.search_for_studies(
            fuzzymatching=True, search_filters={"StudyDescription": text.lower()}
        )
        assert set(_found(results)) == _expected(
            lambda f: text.lower() in {d.lower() for d in f.descriptions}
        )
    physician = next(p for f in study_facts().values() for p in f.physicians if p and "^" in p)
    assert _studies(api, ReferringPhysicianName=physician) == _expected(
        lambda f: physician in f.physicians
    )


def test_study_dates_match_a_day_and_ranges_open_at_either_end(api: Api) -> None:
    dates = sorted({d for f in study_facts().values() for d in f.dates if d})
    low, high = dates[len(dates) // 3], dates[2 * len(dates) // 3]
    for value, within in (
        (low, lambda d: d == low),
        (f"{low}-{high}", lambda d: low <= d <= high),
        (f"{low}-", lambda d: d >= low),
        (f"-{high}", lambda d: d <= high),
    ):
        assert _studies(api, StudyDate=value) == _expected(
            lambda f, within=within: any(d and within(d) for d in f.dates)
        ), value


def test_modalities_and_uid_lists_match(api: Api) -> None:
    assert _studies(api, ModalitiesInStudy="CT") == _expected(lambda f: "CT" in f.modalities)
    assert _studies(api, ModalitiesInStudy="CT,SR") == _expected(
        lambda f: bool({"CT", "SR"} & f.modalities)
    )
    two = sorted(study_facts())[:2]
    assert _studies(api, StudyInstanceUID=",".join(two)) == set(two)
    assert _studies(api, StudyInstanceUID="1.2.3.4.5.6.7.8.9") == set()  # no match: []


def test_pages_of_limit_and_offset_cover_every_study_once(api: Api) -> None:
    client = dicomweb(api).client
    pages = [client.search_for_studies(limit=7, offset=offset) for offset in range(0, 70, 7)]
    found = [uid for page in pages for uid in _found(page)]
    assert all(len(page) <= 7 for page in pages)
    assert len(found) == len(set(found)) and set(found) == set(study_facts())
    remaining = client.search_for_studies(limit=5, get_remaining=True)
    assert sorted(_found(remaining)) == sorted(study_facts())


def _patient_of_one_study(facts: StudyFacts) -> bool:
    """A study whose patient ID no other study has: its patient's details are its own."""
    return sum(bool(f.patient_ids & facts.patient_ids) for f in study_facts().values()) == 1


def test_includefield_adds_what_the_files_hold(api: Api) -> None:
    uid, facts = next(
        (u, f)
        for u, f in sorted(study_facts().items())
        if len(f.series) > 1 and _patient_of_one_study(f)
    )
    header = pydicom.dcmread(archived(api, sorted(facts.instances)[0]), stop_before_pixels=True)
    client = dicomweb(api).client
    # Birth date, sex and Study ID from the catalog; Patient Age and Body Part from a file.
    [result] = client.search_for_studies(
        fields=["PatientAge", "00180015"], search_filters={"StudyInstanceUID": uid}
    )
    found = pydicom.Dataset.from_json(result)
    for keyword in ("PatientSex", "PatientBirthDate", "StudyID", "PatientAge", "BodyPartExamined"):
        if header.get(keyword):
            assert found.get(keyword) == header.get(keyword), keyword
    [every] = client.search_for_studies(fields=["all"], search_filters={"StudyInstanceUID": uid})
    assert {"00100010", "00081030", "00201208"} <= set(every)
    # What OHIF's study list asks: a series attribute of each study, which adds no row.
    results = client.search_for_studies(fields=["00081030", "00080060"])
    assert sorted(_found(results)) == sorted(study_facts())
    [one] = [r for r in results if uid_of(r, STUDY_UID) == uid]
    assert one["00201208"]["Value"] == [len(facts.instances)]
    assert one["00080060"]["Value"][0] in facts.modalities


def test_series_and_instances_of_a_study(api: Api) -> None:
    uid, facts = max(study_facts().items(), key=lambda item: len(item[1].series))
    client = dicomweb(api).client
    series = client.search_for_series(study_instance_uid=uid)
    assert set(_found(series, SERIES_UID)) == facts.series
    assert all(uid_of(s, STUDY_UID) == uid for s in series)
    modality = next(iter(facts.modalities))
    of_modality = client.search_for_series(uid, search_filters={"Modality": modality})
    assert of_modality and all(s["00080060"]["Value"] == [modality] for s in of_modality)
    instances = [
        item
        for one in facts.series
        for item in client.search_for_instances(uid, one, get_remaining=True)
    ]
    assert set(_found(instances, SOP_UID)) == facts.instances
    image = next(i for i in instances if "00280010" in i)  # Rows, read from the file
    header = pydicom.dcmread(archived(api, uid_of(image, SOP_UID)), stop_before_pixels=True)
    assert image["00280010"]["Value"] == [header.Rows]
    assert image["00081190"]["Value"][0].endswith(f"/instances/{uid_of(image, SOP_UID)}")
    # Across studies, with the study's attributes.
    found = client.search_for_series(search_filters={"SeriesInstanceUID": sorted(facts.series)[0]})
    assert [uid_of(s, STUDY_UID) for s in found] == [uid] and "00100020" in found[0]
    by_sop = client.search_for_instances(
        search_filters={"SOPInstanceUID": sorted(facts.instances)[0]}
    )
    assert _found(by_sop, SOP_UID) == [sorted(facts.instances)[0]]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"PatientNmae": "X"}, "neither a DICOM keyword"),
        ({"StudyDate": "2024-01-01"}, "not a date"),
        ({"Modality": "MR"}, "cannot be matched here"),
        ({"limit": "ten"}, "not an integer"),
        ({"fuzzymatching": "yes"}, "true or false"),
        ({"includefield": "NoSuchKeyword"}, "neither a DICOM keyword"),
        ({"StudyInstanceUID": "1.2.x"}, "not a UID"),
    ],
)
def test_a_bad_search_is_a_400_that_says_why(api: Api, query: dict[str, str], reason: str) -> None:
    answer = dicomweb(api).raw("/studies", accept="application/dicom+json", **query)
    assert answer.status_code == 400 and reason in answer.json()["detail"], answer.text


def test_a_lab_key_finds_only_its_labs_studies(api: Api) -> None:
    lab_a, lab_b = api.labs.lab_a, api.labs.lab_b
    of_lab = {
        lab: _expected(lambda f, lab=lab: physician_folder(next(iter(f.physicians))) == lab)
        for lab in (lab_a, lab_b)
    }
    client = dicomweb(api, api.labs.key_a).client
    assert set(_found(client.search_for_studies())) == of_lab[lab_a]
    series = client.search_for_series(get_remaining=True)
    assert {uid_of(s, STUDY_UID) for s in series} == of_lab[lab_a]
    other = sorted(of_lab[lab_b])[0]
    assert client.search_for_studies(search_filters={"StudyInstanceUID": other}) == []
    with pytest.raises(HTTPError) as refused:
        client.search_for_series(other)
    with pytest.raises(HTTPError) as unknown:
        client.search_for_series("1.2.3.999.1")
    assert refused.value.response.status_code == unknown.value.response.status_code == 404
    assert refused.value.response.text.replace(other, "1.2.3.999.1") == unknown.value.response.text

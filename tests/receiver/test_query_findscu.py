"""C-FIND with DCMTK's findscu, as a desktop's user or script runs it: Study Root (-S) and
Patient Root (-P), at each level, with wildcards, date ranges and UID lists; each lab's
desktop finds its own lab's studies and nothing of another lab's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.receiver.query_archive import (
    ALL_LABS,
    DESK_A,
    DESK_B,
    QueryArchive,
    findscu,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.shared_setup("archive", shared_by="tests.receiver.conftest.archive"),
]

STUDY_KEYS = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"]


def find(
    archive: QueryArchive, tmp_path: Path, keys: list[str], *, model: str = "-S",
    calling_ae: str = DESK_A,
) -> list[Dataset]:  # fmt: skip
    answers, result = findscu(archive.port, keys, tmp_path / "answers", model=model,
                              calling_ae=calling_ae)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Received Final Find Response (Success)" in result.stderr, result.stderr[-3000:]
    return answers


def study_names(archive: QueryArchive, answers: list[Dataset]) -> set[str]:
    by_uid = {study.uid: name for name, study in archive.studies.items()}
    return {by_uid[str(answer.StudyInstanceUID)] for answer in answers}


def test_a_study_answer_holds_the_keys_asked_from_the_catalog(
    archive: QueryArchive, tmp_path: Path
) -> None:
    keys = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
            "StudyTime", "AccessionNumber", "StudyDescription", "ReferringPhysicianName",
            "StudyID", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances"]  # fmt: skip
    uid = archive.uid("a1")
    (answer,) = find(archive, tmp_path, [*STUDY_KEYS[:1], f"StudyInstanceUID={uid}", *keys])
    assert answer.QueryRetrieveLevel == "STUDY"
    assert answer.StudyInstanceUID == uid
    assert str(answer.PatientName) == "DOE^JANE" and answer.PatientID == "PA001"
    assert (answer.PatientBirthDate, answer.PatientSex) == ("19800101", "F")
    assert (answer.StudyDate, answer.StudyTime) == ("20240115", "101500")
    assert answer.AccessionNumber == "ACC-A1" and answer.StudyDescription == "Brain^Research"
    assert str(answer.ReferringPhysicianName) == "RESEARCH^ALPHA" and answer.StudyID == "S-A1"
    assert answer.ModalitiesInStudy == "MR"
    assert (answer.NumberOfStudyRelatedSeries, answer.NumberOfStudyRelatedInstances) == (2, 6)
    assert (answer.RetrieveAETitle, answer.InstanceAvailability) == ("DCMDB", "ONLINE")
    # PS3.4 C.4.1.1.3.2: the keys asked, the level, the retrieve AE and availability; no more.
    asked = {"QueryRetrieveLevel", "StudyInstanceUID", "RetrieveAETitle",
             "InstanceAvailability", *keys}  # fmt: skip
    assert {element.keyword for element in answer} == asked


def test_what_the_catalog_did_not_record_yet_is_read_from_a_file(
    archive: QueryArchive, tmp_path: Path
) -> None:
    # a3 was filed before the catalog kept birth dates, sex and Study IDs.
    keys = [*STUDY_KEYS, "PatientName=DOE^JOHN", "PatientBirthDate", "PatientSex", "StudyID"]
    (answer,) = find(archive, tmp_path, keys)
    assert (answer.PatientBirthDate, answer.PatientSex, answer.StudyID) == ("19900615", "M", "S-A3")
    found = find(archive, tmp_path, [*STUDY_KEYS, "PatientBirthDate=19900101-19901231"])
    assert study_names(archive, found) == {"a3"}
    assert find(archive, tmp_path, [*STUDY_KEYS, "PatientBirthDate=19900101-19900131"]) == []
    found = find(archive, tmp_path, [*STUDY_KEYS, "PatientSex=M"])
    assert study_names(archive, found) == {"a2", "a3"}


def test_names_that_are_not_ascii_come_in_utf_8(archive: QueryArchive, tmp_path: Path) -> None:
    query = [
        *STUDY_KEYS,
        "SpecificCharacterSet=ISO_IR 192",
        "PatientName=müller*",
        "ModalitiesInStudy",
    ]
    (answer,) = find(archive, tmp_path, query)
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Müller^Jörg"
    assert answer.ModalitiesInStudy == ["CT", "MR"]


def test_patient_names_match_wildcards_in_any_case(archive: QueryArchive, tmp_path: Path) -> None:
    names = study_names(archive, find(archive, tmp_path, [*STUDY_KEYS, "PatientName=doe*"]))
    assert names == {"a1", "a3"}
    answers = find(archive, tmp_path, [*STUDY_KEYS, "PatientName=DOE^J?NE"])
    assert study_names(archive, answers) == {"a1"}
    answers = find(archive, tmp_path, [*STUDY_KEYS, "PatientName=DOE^JOHN"])
    assert study_names(archive, answers) == {"a3"}


def test_other_text_matches_as_written(archive: QueryArchive, tmp_path: Path) -> None:
    answers = find(archive, tmp_path, [*STUDY_KEYS, "StudyDescription=Brain*"])
    assert study_names(archive, answers) == {"a1", "a3"}
    assert find(archive, tmp_path, [*STUDY_KEYS, "StudyDescription=brain*"]) == []
    answers = find(archive, tmp_path, [*STUDY_KEYS, "AccessionNumber=ACC-A2"])
    assert study_names(archive, answers) == {"a2"}
    answers = find(archive, tmp_path, [*STUDY_KEYS, "ReferringPhysicianName=*ALPHA"])
    assert study_names(archive, answers) == {"a1", "a2", "a3"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("StudyDate=20240101-20240131", {"a1"}),
        ("StudyDate=-20231231", {"a3"}),
        ("StudyDate=20240201-", {"a2"}),
        ("StudyDate=20240220", {"a2"}),
        ("StudyTime=080000-110000", {"a1", "a2"}),
        ("StudyTime=2359-", {"a3"}),
    ],
)
def test_dates_and_times_match_as_ranges(
    archive: QueryArchive, tmp_path: Path, value: str, expected: set[str]
) -> None:
    assert study_names(archive, find(archive, tmp_path, [*STUDY_KEYS, value])) == expected


def test_a_list_of_uids_finds_each(archive: QueryArchive, tmp_path: Path) -> None:
    uids = "\\".join([archive.uid("a1"), archive.uid("a3"), "1.2.3.4.5"])
    answers = find(archive, tmp_path, [STUDY_KEYS[0], f"StudyInstanceUID={uids}"])
    assert study_names(archive, answers) == {"a1", "a3"}


def test_modalities_in_study_matches_any_series(archive: QueryArchive, tmp_path: Path) -> None:
    answers = find(archive, tmp_path, [*STUDY_KEYS, "ModalitiesInStudy=CT"])
    assert study_names(archive, answers) == {"a2"}
    answers = find(archive, tmp_path, [*STUDY_KEYS, "ModalitiesInStudy=CT\\MR"])
    assert study_names(archive, answers) == {"a1", "a2", "a3"}


def test_series_of_a_study(archive: QueryArchive, tmp_path: Path) -> None:
    study = archive.studies["a1"]
    answers = find(archive, tmp_path, [
        "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.uid}", "SeriesInstanceUID",
        "Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances",
        "SeriesDate", "StudyDate",
    ])  # fmt: skip
    got = {
        str(a.SeriesInstanceUID): (a.Modality, a.SeriesNumber, a.SeriesDescription,
                                   a.NumberOfSeriesRelatedInstances, a.SeriesDate, a.StudyDate)
        for a in answers
    }  # fmt: skip
    assert got == {
        s.uid: ("MR", s.spec.number, s.spec.description, len(s.instances), "20240115", "20240115")
        for s in study.series
    }
    answers = find(archive, tmp_path, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.uid}",
                                       "SeriesInstanceUID", "SeriesNumber=2"])  # fmt: skip
    assert [a.SeriesInstanceUID for a in answers] == [study.series[1].uid]


def test_images_of_a_series_with_keys_from_their_headers(
    archive: QueryArchive, tmp_path: Path
) -> None:
    study = archive.studies["a1"]
    series = study.series[0]
    level = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study.uid}",
             f"SeriesInstanceUID={series.uid}"]  # fmt: skip
    answers = find(archive, tmp_path, [*level, "SOPInstanceUID", "SOPClassUID", "InstanceNumber",
                                       "Rows", "Columns"])  # fmt: skip
    assert [a.SOPInstanceUID for a in answers] == series.instances
    assert {(a.SOPClassUID, a.Rows, a.Columns) for a in answers} == {
        ("1.2.840.10008.5.1.4.1.1.4", 64, 64)
    }
    assert [a.InstanceNumber for a in answers] == [1, 2, 3, 4]
    answers = find(archive, tmp_path, [*level, "SOPInstanceUID", "InstanceNumber=3"])
    assert [a.SOPInstanceUID for a in answers] == [series.instances[2]]
    # A key only the header has, matched there.
    assert len(find(archive, tmp_path, [*level, "SOPInstanceUID", "Rows=64"])) == 4
    assert find(archive, tmp_path, [*level, "SOPInstanceUID", "Rows=512"]) == []


def test_patient_root_finds_patients_then_their_studies(
    archive: QueryArchive, tmp_path: Path
) -> None:
    answers = find(archive, tmp_path, ["QueryRetrieveLevel=PATIENT", "PatientName=DOE*",
                                       "PatientID", "NumberOfPatientRelatedStudies"],
                   model="-P")  # fmt: skip
    # PA001 has a study in lab B and one being evicted: neither counts for lab A.
    assert {(a.PatientID, a.NumberOfPatientRelatedStudies) for a in answers} == {
        ("PA001", 1),
        ("PA003", 1),
    }
    answers = find(archive, tmp_path, [*STUDY_KEYS, "PatientID=PA001"], model="-P")
    assert study_names(archive, answers) == {"a1"}
    answers = find(archive, tmp_path, [*STUDY_KEYS, "PatientID=PA001"], model="-P",
                   calling_ae=ALL_LABS)  # fmt: skip
    assert study_names(archive, answers) == {"a1", "b2"}


def test_a_hierarchical_query_without_the_key_above_is_refused(
    archive: QueryArchive, tmp_path: Path
) -> None:
    _, result = findscu(archive.port, STUDY_KEYS, tmp_path / "a", model="-P")
    assert "DataSetDoesNotMatchSOPClass" in result.stderr
    _, result = findscu(archive.port, ["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2*"],
                        tmp_path / "b")  # fmt: skip
    assert "DataSetDoesNotMatchSOPClass" in result.stderr


def test_another_labs_desktop_finds_nothing_of_this_lab(
    archive: QueryArchive, tmp_path: Path
) -> None:
    lab_b = find(archive, tmp_path, STUDY_KEYS, calling_ae=DESK_B)
    assert study_names(archive, lab_b) == {"b1", "b2"}
    assert study_names(archive, find(archive, tmp_path, STUDY_KEYS)) == {"a1", "a2", "a3"}
    study = archive.studies["a1"]
    for keys in (
        [STUDY_KEYS[0], f"StudyInstanceUID={study.uid}"],
        ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study.uid}", "SeriesInstanceUID"],
        ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study.uid}",
         f"SeriesInstanceUID={study.series[0].uid}", "SOPInstanceUID"],
    ):  # fmt: skip
        assert find(archive, tmp_path, keys, calling_ae=DESK_B) == []
        assert find(archive, tmp_path, keys, calling_ae=DESK_A) != []
    patients = find(archive, tmp_path, ["QueryRetrieveLevel=PATIENT", "PatientID",
                                        "NumberOfPatientRelatedStudies"],
                    model="-P", calling_ae=DESK_B)  # fmt: skip
    assert {(a.PatientID, a.NumberOfPatientRelatedStudies) for a in patients} == {
        ("PA001", 1),
        ("PB001", 1),
    }


def test_a_study_being_evicted_is_found_by_nobody(archive: QueryArchive, tmp_path: Path) -> None:
    keys = [STUDY_KEYS[0], f"StudyInstanceUID={archive.uid('gone')}"]
    assert find(archive, tmp_path, keys, calling_ae=ALL_LABS) == []
    assert find(archive, tmp_path, keys) == []

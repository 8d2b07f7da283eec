"""What a desktop is told: each C-FIND status, sent by pynetdicom as a script's client, with
the Error Comment that says why a query was refused."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
)

from shared.dimse_status import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    NOT_AUTHORIZED,
    PENDING,
    PENDING_WITH_WARNING,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from tests.receiver.query_archive import (
    ELSEWHERE,
    QueryArchive,
    pynetdicom_find,
    write_desktops,
)
from tests.system import receiver_alone

pytestmark = [
    pytest.mark.integration,
    pytest.mark.shared_setup("archive", shared_by="tests.receiver.conftest.archive"),
]


def identifier(**keys: object) -> Dataset:
    dataset = Dataset()
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    return dataset


def test_matches_are_pending_then_success(archive: QueryArchive) -> None:
    responses = pynetdicom_find(
        archive.port, identifier(QueryRetrieveLevel="STUDY", PatientName="DOE*", StudyDate="")
    )
    assert [r.status for r in responses] == [PENDING, PENDING, SUCCESS]
    assert {str(r.identifier.PatientName) for r in responses if r.identifier} == {
        "DOE^JANE",
        "DOE^JOHN",
    }
    assert responses[-1].identifier is None


def test_a_key_dcmdb_cannot_answer_comes_back_empty_with_a_warning(
    archive: QueryArchive,
) -> None:
    # Study Comments are not in the catalog: returned empty, status 0xFF01 (PS3.4 C.4.1.1.4).
    responses = pynetdicom_find(
        archive.port,
        identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=archive.uid("a1"),
                   StudyComments="", PatientID=""),
    )  # fmt: skip
    assert [r.status for r in responses] == [PENDING_WITH_WARNING, SUCCESS]
    answer = responses[0].identifier
    assert answer is not None and answer.PatientID == "PA001"
    assert "StudyComments" in answer and not answer.StudyComments


def test_combined_date_time_matching_when_negotiated(archive: QueryArchive) -> None:
    # a1 was on 15 January at 10:15, a2 on 20 February at 08:30.
    query = identifier(QueryRetrieveLevel="STUDY", StudyDate="20240115-20240220",
                       StudyTime="090000-100000")  # fmt: skip
    apart = pynetdicom_find(archive.port, query)  # each day between 09:00 and 10:00: none
    assert [r.status for r in apart] == [SUCCESS]
    combined = pynetdicom_find(archive.port, query, extended=b"\x00\x01")
    found = {str(r.identifier.StudyInstanceUID) for r in combined if r.identifier is not None}
    assert found == {archive.uid("a1"), archive.uid("a2")}


def test_a_key_of_a_level_below_is_not_answered(archive: QueryArchive) -> None:
    study = archive.studies["a1"]
    responses = pynetdicom_find(
        archive.port,
        identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID=study.uid,
                   SeriesInstanceUID=study.series[0].uid, SOPInstanceUID=""),
    )  # fmt: skip
    assert [r.status for r in responses] == [PENDING_WITH_WARNING, SUCCESS]
    answer = responses[0].identifier
    assert answer is not None and not answer.SOPInstanceUID


def test_a_catalog_not_there_yet_is_a_failure_with_the_reason(
    tmp_path: Path, broker_url: str
) -> None:
    # The receiver never migrates the catalog (the sorter does): until then it cannot answer.
    with receiver_alone(tmp_path, broker_url) as dcmdb:
        write_desktops(dcmdb.data_dir / "keys.yaml", 104)
        (response,) = pynetdicom_find(dcmdb.port, identifier(QueryRetrieveLevel="STUDY"))
    assert response.status == UNABLE_TO_PROCESS
    assert response.comment == "the catalog cannot be read now; try again"


def test_a_peer_that_is_no_desktop_is_refused_and_told_why(archive: QueryArchive) -> None:
    for calling_ae in ("STRANGER", ELSEWHERE):  # unknown; known but calling from elsewhere
        (response,) = pynetdicom_find(
            archive.port, identifier(QueryRetrieveLevel="STUDY"), calling_ae=calling_ae
        )
        assert response.status == NOT_AUTHORIZED
        assert response.comment == f"{calling_ae} at 127.0.0.1 is not a dcmdb desktop"


@pytest.mark.parametrize(
    ("keys", "comment"),
    [
        ({"PatientName": "DOE*"}, "QueryRetrieveLevel (0008,0052) is missing"),
        ({"QueryRetrieveLevel": "STUDIES"}, "QueryRetrieveLevel 'STUDIES' is not STUDY/SERIES/"),
        ({"QueryRetrieveLevel": "PATIENT"}, "QueryRetrieveLevel 'PATIENT' is not STUDY/SERIES/"),
        ({"QueryRetrieveLevel": "SERIES"}, "a query at SERIES level needs one StudyInstanceUID"),
        ({"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "1.2.3"},
         "a query at IMAGE level needs one SeriesInstanceUID"),
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-01"},
         "StudyDate '2024-01' is not a DA value or range"),
    ],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # pydicom, sending it
def test_an_identifier_dcmdb_does_not_answer_is_refused_with_the_reason(
    archive: QueryArchive, keys: dict[str, str], comment: str
) -> None:
    (response,) = pynetdicom_find(archive.port, identifier(**keys))
    assert response.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert response.comment.startswith(comment)


def test_queries_are_counted_for_monitoring(archive: QueryArchive) -> None:
    def counted(name: str) -> float:
        text = httpx.get(archive.dcmdb.side_url("receiver", "/metrics"), timeout=10).text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    answered = 'dcmdb_receiver_queries_total{level="STUDY",outcome="answered"}'
    matches = 'dcmdb_receiver_query_matches_total{level="STUDY"}'
    before = counted(answered), counted(matches)
    pynetdicom_find(archive.port, identifier(QueryRetrieveLevel="STUDY", PatientName="DOE*"))
    assert (counted(answered), counted(matches)) == (before[0] + 1, before[1] + 2)


def test_patient_root_needs_the_patient_id_above_a_study(archive: QueryArchive) -> None:
    model = str(PatientRootQueryRetrieveInformationModelFind)
    (refused,) = pynetdicom_find(archive.port, identifier(QueryRetrieveLevel="STUDY"), model=model)
    assert refused.status == IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert refused.comment == "a query at STUDY level needs one PatientID"
    found = pynetdicom_find(
        archive.port, identifier(QueryRetrieveLevel="STUDY", PatientID="PA003"), model=model
    )
    assert [r.status for r in found] == [PENDING, SUCCESS]

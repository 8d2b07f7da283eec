"""Orthanc as a desktop's query client: dcmdb is one of its DICOM modalities, queried through
Orthanc's REST API (/modalities/{id}/query) at study, series and instance level."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pacs_peers import Orthanc
from tests.receiver.query_archive import DESK_A, QueryArchive

pytestmark = [
    pytest.mark.integration,
    pytest.mark.shared_setup("archive", shared_by="tests.receiver.conftest.archive"),
]


@pytest.fixture
def orthanc(archive: QueryArchive, tmp_path: Path) -> Iterator[Orthanc]:
    # Orthanc calls as its own AE title: lab A's desktop, on this host.
    with Orthanc(tmp_path / "orthanc", ("DCMDB", "127.0.0.1", archive.port), DESK_A) as peer:
        yield peer


def query(orthanc: Orthanc, level: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    """Orthanc's answers to its C-FIND at dcmdb, each as {keyword: value}."""
    with httpx.Client(base_url=orthanc.url, timeout=60) as client:
        started = client.post("/modalities/dcmdb/query", json={"Level": level, "Query": keys})
        assert started.status_code == 200, started.text
        path = started.json()["Path"]
        count = len(client.get(f"{path}/answers").json())
        return [
            client.get(f"{path}/answers/{index}/content", params={"simplify": ""}).json()
            for index in range(count)
        ]


def test_orthanc_finds_studies_by_name_and_date(archive: QueryArchive, orthanc: Orthanc) -> None:
    keys = {"PatientName": "doe*", "StudyDate": "20240101-20240131", "ModalitiesInStudy": "",
            "NumberOfStudyRelatedInstances": ""}  # fmt: skip
    answers = query(orthanc, "Study", keys)
    assert [(a["StudyInstanceUID"], a["PatientName"], a["ModalitiesInStudy"],
             a["NumberOfStudyRelatedInstances"]) for a in answers] == [
        (archive.uid("a1"), "DOE^JANE", "MR", "6")
    ]  # fmt: skip
    assert {a["RetrieveAETitle"] for a in answers} == {"DCMDB"}


def test_orthanc_lists_the_series_and_instances_of_a_study(
    archive: QueryArchive, orthanc: Orthanc
) -> None:
    study = archive.studies["a2"]
    series = query(orthanc, "Series", {"StudyInstanceUID": study.uid, "Modality": "",
                                       "SeriesNumber": ""})  # fmt: skip
    assert sorted((s["SeriesInstanceUID"], s["Modality"], s["SeriesNumber"]) for s in series) == (
        sorted((s.uid, s.spec.modality, str(s.spec.number)) for s in study.series)
    )
    ct = study.series[1]
    keys = {"StudyInstanceUID": study.uid, "SeriesInstanceUID": ct.uid, "SOPInstanceUID": ""}
    instances = query(orthanc, "Instance", keys)
    assert [i["SOPInstanceUID"] for i in instances] == ct.instances


def test_orthanc_of_lab_a_finds_nothing_of_lab_b(archive: QueryArchive, orthanc: Orthanc) -> None:
    found = {a["StudyInstanceUID"] for a in query(orthanc, "Study", {"PatientID": ""})}
    assert found == {archive.uid(name) for name in ("a1", "a2", "a3")}
    assert query(orthanc, "Study", {"StudyInstanceUID": archive.uid("b1")}) == []
    assert query(orthanc, "Series", {"StudyInstanceUID": archive.uid("b1")}) == []

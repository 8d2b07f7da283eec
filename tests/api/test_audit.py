"""What the audit trail records of each route, in process: the API application on a real
archive and catalog (SQLite and PostgreSQL), a real PACS (dcmqrscp) for the PACS check and
the repair, and keys with names in a real keys file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.catalog.states import AuditAction
from tests.arrivals import Sorter
from tests.audit_site import (
    ADMIN,
    OPERATOR,
    PATIENT_ID,
    PATIENT_NAME,
    READ,
    READER,
    assert_no_patient_data,
    bearer,
    patient_study,
    stored,
    write_keys,
)
from tests.filed_studies import Archive
from tests.pacs_peers import Dcmqrscp
from tests.system import dicom_files

pytestmark = pytest.mark.integration

ON_THE_PACS = "d2n_mr_4slice_uncompressed"  # a study the catalog does not hold


@pytest.fixture
def archive(sorter: Sorter, testdata: Path, catalog_url: str) -> Archive:
    return Archive(sorter, testdata, catalog_url)


@contextmanager
def _client(archive: Archive, **settings: Any) -> Iterator[TestClient]:
    write_keys(archive.sorter.data / "keys.yaml")
    values = {"data_dir": archive.sorter.data, "database_url": archive.url, **settings}
    with TestClient(create_app(ApiSettings(**values))) as client:
        yield client


@pytest.fixture
def api(archive: Archive) -> Iterator[TestClient]:
    with _client(archive, pacs="PACS@127.0.0.1:1") as client:  # jobs are only queued here
        yield client


def _trail(api: TestClient, **filters: Any) -> list[dict[str, Any]]:
    answer = api.get("/audit", params=filters, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["next"] is None
    return list(reversed(answer.json()["items"]))  # oldest first


def test_every_read_of_patient_data_is_recorded_with_its_key_client_and_bytes(
    api: TestClient, archive: Archive
) -> None:
    study, series = patient_study(archive)
    reads = {
        # Filters with the patient's name and ID: the trail keeps none of a query.
        AuditAction.STUDIES_LIST: (
            "/studies",
            {"patient_name": PATIENT_NAME, "patient_id": PATIENT_ID},
        ),
        AuditAction.STUDY_READ: (f"/studies/{study}", {}),
        AuditAction.SERIES_READ: (f"/series/{series}", {}),
        AuditAction.SERIES_PREVIEW: (f"/series/{series}/preview.png", {}),
        AuditAction.SERIES_NIFTI: (f"/series/{series}/nifti", {}),
        AuditAction.STUDY_ARCHIVE: (f"/studies/{study}/archive", {"format": "all"}),
    }
    answers: dict[AuditAction, httpx.Response] = {}
    for action, (path, params) in reads.items():
        answers[action] = api.get(path, params=params, headers=READ)
        assert answers[action].status_code == 200, (action, answers[action].text)
    assert answers[AuditAction.STUDIES_LIST].json()["items"][0]["study_uid"] == study

    trail = _trail(api)
    assert [entry["action"] for entry in trail] == list(reads)
    for entry in trail:
        action = AuditAction(entry["action"])
        listing = action is AuditAction.STUDIES_LIST
        assert entry["key_name"] == READER
        assert entry["client"] == "testclient"  # the peer's address, as the server saw it
        assert entry["status"] == 200
        assert entry["bytes_sent"] == len(answers[action].content) > 0, action
        assert entry["study_uid"] == (None if listing else study)  # a series' study too
        assert entry["series_uid"] == (series if action.startswith("series.") else None)
        assert entry["job_id"] is None
    assert_no_patient_data(stored(archive.sessions))


def test_pins_and_retrievals_are_recorded_with_their_study_and_job(
    api: TestClient, archive: Archive
) -> None:
    study, _ = patient_study(archive)
    assert api.post(f"/studies/{study}/pin", headers=ADMIN).status_code == 200
    assert api.delete(f"/studies/{study}/pin", headers=ADMIN).status_code == 200
    # A retrieval asked by the patient's ID: the job's query keeps it, the trail does not.
    by_patient = api.post("/retrievals", json={"patient_id": PATIENT_ID}, headers=ADMIN)
    by_study = api.post("/retrievals", json={"study_uid": study}, headers=ADMIN)
    assert by_patient.status_code == by_study.status_code == 202
    jobs = by_patient.json()["id"], by_study.json()["id"]
    assert api.delete(f"/retrievals/{jobs[1]}", headers=ADMIN).status_code == 202

    assert [
        (e["action"], e["study_uid"], e["job_id"], e["status"], e["key_name"]) for e in _trail(api)
    ] == [
        ("study.pin", study, None, 200, OPERATOR),
        ("study.unpin", study, None, 200, OPERATOR),
        ("retrieval.start", None, jobs[0], 202, OPERATOR),
        ("retrieval.start", study, jobs[1], 202, OPERATOR),
        ("retrieval.cancel", None, jobs[1], 202, OPERATOR),
    ]
    assert_no_patient_data(stored(archive.sessions))


def test_a_failed_answer_is_recorded_without_what_was_typed_and_a_refused_key_not_at_all(
    api: TestClient, archive: Archive
) -> None:
    """A UID that failed may be anything a caller typed, a patient's ID among them: the
    record keeps the key, the action and the status only."""
    for typed in (PATIENT_ID, "20240042"):
        assert api.get(f"/studies/{typed}", headers=READ).status_code == 404
        assert api.get(f"/series/{typed}/nifti", headers=READ).status_code == 404
    assert api.delete("/retrievals/999999", headers=ADMIN).status_code == 404
    study, _ = patient_study(archive)
    assert api.get(f"/studies/{study}").status_code == 401  # no key: nobody to record
    assert api.get(f"/studies/{study}", headers=bearer("not-a-key-0123456789")).status_code == 401
    assert api.post(f"/studies/{study}/pin", headers=READ).status_code == 403
    assert api.get("/studies", params={"patient_nam": PATIENT_NAME}, headers=READ).status_code == (
        422  # refused with the key's check, before the route
    )

    trail = _trail(api)
    assert [(e["action"], e["status"]) for e in trail] == [
        *[("study.read", 404), ("series.nifti", 404)] * 2,
        ("retrieval.cancel", 404),
    ]
    assert all(e["study_uid"] is e["series_uid"] is e["job_id"] is None for e in trail)
    assert_no_patient_data(stored(archive.sessions))


@pytest.fixture
def pacs(tmp_path: Path, testdata: Path) -> Iterator[Dcmqrscp]:
    with Dcmqrscp(tmp_path / "pacs", ("DCMDB", "127.0.0.1", 1)) as peer:
        peer.fill(dicom_files(testdata / ON_THE_PACS))
        yield peer


def test_the_pacs_check_and_the_repair_are_recorded(archive: Archive, pacs: Dcmqrscp) -> None:
    study = str(dcmread(dicom_files(archive.testdata / ON_THE_PACS)[0]).StudyInstanceUID)
    with _client(archive, pacs=f"{pacs.ae_title}@127.0.0.1:{pacs.port}") as api:
        check = api.get(f"/studies/{study}/pacs-check", headers=READ)
        assert check.status_code == 200 and check.json()["complete"] is False, check.text
        repair = api.post(f"/studies/{study}/repair", headers=ADMIN)
        assert repair.status_code == 202, repair.text
        assert [
            (e["action"], e["key_name"], e["study_uid"], e["job_id"], e["bytes_sent"])
            for e in _trail(api)
        ] == [
            ("study.pacs_check", READER, study, None, len(check.content)),
            ("study.repair", OPERATOR, study, repair.json()["id"], len(repair.content)),
        ]

"""A C-FIND over many studies: the answers stream (the first arrives long before the last is
read from the catalog), and a desktop's C-CANCEL stops them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import insert

from shared.catalog.database import open_catalog
from shared.catalog.models import Patient, Series, Study
from shared.dimse_status import CANCEL, PENDING, SUCCESS
from tests.receiver.query_archive import DESK_A, FOLDER_A, findscu, pynetdicom_find, write_desktops
from tests.system import Dcmdb

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]

STUDIES = 20_000  # some seconds of answers: a cancel sent after the first arrives in time


@pytest.fixture(scope="module")
def many_studies(tmp_path_factory: pytest.TempPathFactory, broker_url: str) -> Iterator[Dcmdb]:
    root = tmp_path_factory.mktemp("many")
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    engine, _ = open_catalog(url, writer=True)
    now = datetime.now(UTC)
    with engine.begin() as db:  # rows only: a study-level C-FIND reads no file
        db.execute(insert(Patient.__table__), [
            {"id": 1, "patient_id": "P1", "patient_name": "MANY^STUDIES", "birth_date": "",
             "sex": ""}])  # fmt: skip
        db.execute(insert(Study.__table__), [
            {"id": i, "study_instance_uid": f"1.2.826.0.1.3680043.10.1.{i}", "patient_pk": 1,
             "physician_name": "RESEARCH^ALPHA", "physician_folder": FOLDER_A,
             "folder": f"study{i}", "study_date": "20240101", "study_time": "120000",
             "description": "many", "accession_number": f"A{i}", "study_id": "",
             "received_at": now, "last_received_at": now}
            for i in range(1, STUDIES + 1)
        ])  # fmt: skip
        db.execute(insert(Series.__table__), [
            {"id": i, "series_instance_uid": f"1.2.826.0.1.3680043.10.2.{i}", "study_pk": i,
             "folder": "1_t1", "modality": "MR", "series_number": 1, "description": "t1",
             "received_at": now, "last_received_at": now, "instance_count": 1}
            for i in range(1, STUDIES + 1)
        ])  # fmt: skip
    engine.dispose()
    dcmdb = Dcmdb(root / "data", broker_url, url)
    write_desktops(dcmdb.data_dir / "keys.yaml", 104)
    dcmdb.start("receiver")
    try:
        dcmdb.wait_until_listening()
        yield dcmdb
    finally:
        dcmdb.stop()


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    from tests.conftest import fresh_vhost

    yield from fresh_vhost()


def study_query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.ModalitiesInStudy = ""
    return query


def test_a_cancel_stops_the_answers(many_studies: Dcmdb) -> None:
    responses = pynetdicom_find(many_studies.port, study_query(), cancel_after=1)
    assert responses[-1].status == CANCEL
    assert {r.status for r in responses[:-1]} == {PENDING}
    assert len(responses) - 1 < STUDIES


def test_findscu_cancels_too(many_studies: Dcmdb, tmp_path: Path) -> None:
    keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"]
    _, result = findscu(many_studies.port, keys, tmp_path, calling_ae=DESK_A,
                        extra=("--cancel", "1"))  # fmt: skip
    assert "(Cancel: MatchingTerminatedDueToCancelRequest)" in result.stderr, result.stderr[-2000:]
    received = len(re.findall(r"Received Find Response \d+", result.stderr))
    assert 1 <= received < STUDIES


def test_every_study_is_answered_when_nobody_cancels(many_studies: Dcmdb) -> None:
    responses = pynetdicom_find(many_studies.port, study_query())
    assert len(responses) == STUDIES + 1 and responses[-1].status == SUCCESS
    uids = {str(r.identifier.StudyInstanceUID) for r in responses if r.identifier is not None}
    assert len(uids) == STUDIES

"""Other query/retrieve clients retrieve from dcmdb: Orthanc through its REST API, and a
second dcmdb's retriever, with this dcmdb as its PACS. Each instance arrives as archived."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.retriever.forwarding import Forwarder
from shared.catalog.database import create_catalog_engine, session_factory
from shared.catalog.models import Instance
from shared.pacs_retrieve import retrieve
from shared.peers import Peer
from tests.conftest import fresh_vhost
from tests.pacs_peers import Orthanc
from tests.receiver.retrieve_archive import (
    FOLDER_A,
    RetrieveArchive,
    data_set_digest,
    retrieve_archive,
)
from tests.support import finished_job, wait_for
from tests.system import AE_TITLE, Dcmdb, migrated

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> Iterator[RetrieveArchive]:
    with retrieve_archive(tmp_path_factory.mktemp("retrieve-peers"), testdata) as filed:
        yield filed


def test_orthanc_queries_and_retrieves_a_study_as_archived(
    archive: RetrieveArchive, tmp_path: Path
) -> None:
    """Orthanc, configured as a desktop of lab A, queries dcmdb (POST /modalities/dcmdb/query)
    and retrieves what it found to itself (/queries/{id}/retrieve, TargetAet its own)."""
    with Orthanc(tmp_path / "orthanc", (AE_TITLE, "127.0.0.1", archive.port), "ORTHANC_A") as peer:
        archive.desktop("ORTHANC_A", peer.port, [FOLDER_A])
        with httpx.Client(base_url=peer.url, timeout=120) as client:
            for name in ("syntaxes", "mr"):
                query = client.post(
                    "/modalities/dcmdb/query",
                    json={"Level": "Study", "Query": {"StudyInstanceUID": archive.uid(name)}},
                )
                assert query.status_code == 200, query.text
                found = query.json()["ID"]
                assert len(client.get(f"/queries/{found}/answers").json()) == 1
                retrieved = client.post(
                    f"/queries/{found}/retrieve",
                    json={"TargetAet": "ORTHANC_A", "Synchronous": True},
                )
                assert retrieved.status_code == 200, retrieved.text
            stored = {}
            for orthanc_id in client.get("/instances").json():
                content = client.get(f"/instances/{orthanc_id}/file").content
                tags = client.get(f"/instances/{orthanc_id}/simplified-tags").json()
                stored[tags["SOPInstanceUID"]] = data_set_digest(content)
            # Lab B's study is not Orthanc's to find, nor to have when asked for by UID.
            query = client.post(
                "/modalities/dcmdb/query",
                json={"Level": "Study", "Query": {"StudyInstanceUID": archive.uid("b")}},
            )
            assert client.get(f"/queries/{query.json()['ID']}/answers").json() == []
            moved = client.post(
                "/modalities/dcmdb/move",
                json={"Level": "Study", "Resources": [{"StudyInstanceUID": archive.uid("b")}],
                      "TargetAet": "ORTHANC_A", "Synchronous": True},
            )  # fmt: skip
            assert moved.status_code == 200, moved.text
            assert len(client.get("/instances").json()) == len(stored)
    assert stored == archive.archived("syntaxes", "mr")


@pytest.fixture
def downstream(tmp_path: Path, archive: RetrieveArchive) -> Iterator[Dcmdb]:
    """A second dcmdb (receiver, sorter, retriever and API) whose PACS is the archive's
    dcmdb: its AE title is a desktop there that sees every lab."""
    vhosts = fresh_vhost()
    dcmdb = Dcmdb(tmp_path / "data", next(vhosts), f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    dcmdb.extra_env.update(
        DCMDB_PACS=f"{AE_TITLE}@127.0.0.1:{archive.port}",
        DCMDB_NIGHTLY_RETRIEVE="",
        DCMDB_POLL_INTERVAL="0.3",
    )
    archive.desktop(AE_TITLE, dcmdb.port, "all")
    try:
        for service in ("receiver", "sorter", "retriever", "api"):
            dcmdb.start(service)
        dcmdb.wait_until_listening()
        dcmdb.wait_until_api_answers()
        yield dcmdb
    finally:
        dcmdb.stop()
        next(vhosts, None)


def filed(dcmdb: Dcmdb) -> dict[str, str]:
    """SOP Instance UID: data set digest of what the second dcmdb filed."""
    engine = create_catalog_engine(dcmdb.database_url)
    try:
        if not migrated(engine):
            return {}
        with session_factory(engine)() as session:
            rows = list(session.execute(select(Instance.sop_instance_uid, Instance.path)))
    finally:
        engine.dispose()
    archive = dcmdb.data_dir / "archive"
    return {uid: data_set_digest((archive / path).read_bytes()) for uid, path in rows}


@pytest.mark.parametrize(
    ("how", "names"),
    [
        ("move", ("mr", "syntaxes", "b")),
        # A C-GET requestor proposes each SOP class in one context, dcmdb's retriever in
        # Explicit VR Little Endian first, which dcmdb accepts: what is stored so goes as
        # it is (compressed instances would fail: dcmdb does not decompress).
        ("get", ("mr",)),
    ],
)
def test_a_second_dcmdb_retrieves_from_this_one(
    archive: RetrieveArchive, downstream: Dcmdb, how: str, names: tuple[str, ...]
) -> None:
    """The retriever's C-MOVE (to the second dcmdb's receiver) or C-GET (handed on to it
    as the retriever does), against dcmdb as the PACS: every instance is filed there."""
    pacs = Peer("upstream", AE_TITLE, "127.0.0.1", archive.port, retrieve=how)  # type: ignore[arg-type]
    forwarder = Forwarder(AE_TITLE, "127.0.0.1", downstream.port, None) if how == "get" else None
    try:
        for name in names:
            result = retrieve(
                pacs, AE_TITLE, archive.uid(name), store=forwarder.store if forwarder else None
            )
            assert result.succeeded, result.reason
            assert result.completed == len(archive.studies[name].instances)
    finally:
        if forwarder is not None:
            forwarder.close()
    expected = archive.archived(*names)
    wait_for(lambda: len(filed(downstream)) == len(expected), 120, "every instance filed")
    assert filed(downstream) == expected


def _job(api: httpx.Client, job_id: int) -> dict[str, Any]:
    return dict(api.get(f"/retrievals/{job_id}").json())


def test_a_second_dcmdb_retrieval_job_files_every_instance(
    archive: RetrieveArchive, downstream: Dcmdb
) -> None:
    """POST /retrievals on the second dcmdb: its retriever finds the study on this one
    (C-FIND), checks what each series holds and moves it; the job completes and every
    instance is filed there as archived here."""
    with httpx.Client(base_url=f"http://127.0.0.1:{downstream.api_port}", timeout=60) as api:
        for name in ("mr", "syntaxes"):
            answer = api.post("/retrievals", json={"study_uid": archive.uid(name)})
            assert answer.status_code == 202, answer.text
            job = finished_job(partial(_job, api, answer.json()["id"]), 180)
            assert job["state"] == "completed", job
            [study] = job["studies"]
            assert study["completed"] == len(archive.studies[name].instances)
    expected = archive.archived("mr", "syntaxes")
    wait_for(lambda: len(filed(downstream)) == len(expected), 120, "every instance filed")
    assert filed(downstream) == expected

"""Rescue (DCMDB_RESCUE=fetch) with dcmdb running: what the PACS lacks is retrieved from
the scanner (dcmqrscp) into dcmdb, the next run closes it as rescued, the API lists it,
and an admin's forward sends a rescued study on to the PACS (dcmqrscp) by C-STORE."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from shared.catalog.database import open_catalog
from shared.catalog.models import RetrievalJob
from shared.catalog.reconciliation import Difference
from shared.catalog.states import DifferenceKind, DifferenceState, Resolution
from shared.catalog.types import now
from shared.pacs_find import counted_series
from shared.reconciliation import reconcile_scanner
from shared.retrievals import RESCUE
from tests.conftest import fresh_vhost
from tests.reconciliation.peers import Site, site
from tests.support import wait_for
from tests.system import Dcmdb

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup()]

ADMIN = "admin-key-for-rescue-tests-0123456789"


@dataclass
class Rescue:
    dcmdb: Dcmdb
    peers: Site
    api: httpx.Client
    url: str


@pytest.fixture(scope="module")
def rescue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rescue]:
    root = tmp_path_factory.mktemp("rescue")
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    dcmdb = Dcmdb(root / "data", next(fresh_vhost()), url)
    with site(root / "peers", destination=("DCMDB", "127.0.0.1", dcmdb.port)) as peers:
        dcmdb.extra_env.update(
            {
                "DCMDB_PACS_FILE": str(peers.peers_file),
                "DCMDB_RESCUE": "fetch",
                "DCMDB_NIGHTLY_RETRIEVE": "",
                "DCMDB_NIGHTLY_RECONCILE": "",
                "DCMDB_STABLE_AGE": "600",
                "DCMDB_POLL_INTERVAL": "0.3",
                "DCMDB_API_KEYS": f"{ADMIN}:admin",
            }
        )
        dcmdb.start("up")
        try:
            dcmdb.wait_until_listening()
            dcmdb.wait_until_api_answers()
            with httpx.Client(
                base_url=f"http://127.0.0.1:{dcmdb.api_port}",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=60,
            ) as api:
                yield Rescue(dcmdb, peers, api, url)
        finally:
            dcmdb.stop()


def _reconcile(rescue: Rescue) -> None:
    settings = rescue.peers.settings(rescue.url, rescue="fetch")
    engine, sessions = open_catalog(rescue.url, writer=True)
    try:
        reconcile_scanner(settings, sessions, settings.scanner("console"))
    finally:
        engine.dispose()


def _rows(url: str) -> list[Difference]:
    engine, sessions = open_catalog(url)
    try:
        with sessions() as session:
            return list(
                session.scalars(
                    select(Difference)
                    .where(Difference.scanner == "console")
                    .order_by(Difference.id)
                )
            )
    finally:
        engine.dispose()


def _rescue_jobs_ended(url: str) -> bool:
    engine, sessions = open_catalog(url)
    try:
        with sessions() as session:
            jobs = session.scalars(select(RetrievalJob).where(RetrievalJob.origin == RESCUE))
            states = [job.state for job in jobs]
    finally:
        engine.dispose()
    return bool(states) and all(state.finished for state in states)


def test_fetch_rescues_from_the_scanner_and_the_next_run_closes_and_forward_sends_it(
    rescue: Rescue,
) -> None:
    _reconcile(rescue)
    rows = _rows(rescue.url)
    assert len(rows) == 3
    assert {row.state for row in rows} == {DifferenceState.RESCUING}
    assert all(row.retrieval_job_id is not None for row in rows)
    wait_for(lambda: _rescue_jobs_ended(rescue.url), 120, "the rescue jobs to end")

    _reconcile(rescue)
    rows = _rows(rescue.url)
    assert [(row.state, row.resolution) for row in rows] == [
        (DifferenceState.CLOSED, Resolution.RESCUED)
    ] * 3
    assert len(_rows(rescue.url)) == 3  # the PACS still lacks them: no new rows either

    listed = rescue.api.get("/reconciliation", params={"state": "closed"})
    assert listed.status_code == 200, listed.text
    assert {d["resolution"] for d in listed.json()["differences"]} == {"rescued from the scanner"}
    assert listed.json()["runs"][0]["state"] == "checked"

    missing = next(row for row in rows if row.kind == DifferenceKind.STUDY_MISSING)
    studies = rescue.peers.studies
    sent = rescue.api.post(f"/reconciliation/{missing.id}/forward")
    assert sent.status_code == 200, sent.text
    assert (sent.json()["sent"], sent.json()["failed"]) == (5, 0)
    assert sent.json()["difference"]["forwarded_at"] is not None
    pacs = rescue.peers.settings(rescue.url).peer("pacs")
    on_pacs = counted_series(pacs, studies.missing.uid)
    assert sorted(s.instance_count for s in on_pacs) == [2, 3]


def test_forward_of_what_dcmdb_does_not_hold_is_refused(rescue: Rescue) -> None:
    assert rescue.api.post("/reconciliation/2147483647/forward").status_code == 404
    day = dt.date.today()
    engine, sessions = open_catalog(rescue.url, writer=True)
    try:
        with sessions() as session, session.begin():
            row = Difference(
                scanner="another-console",  # apart from the other test's rows
                study_uid="1.2.826.0.1.3680043.8.498.1",  # a study dcmdb has nothing of
                series_uid="",
                kind=DifferenceKind.STUDY_MISSING,
                state=DifferenceState.OPEN,
                lab="SMITH_JOHN",
                study_date=day,
                deadline=day + dt.timedelta(days=14),
                scanner_instances=3,
                pacs_instances=0,
                found_at=now(),
                checked_at=now(),
                resolution="",
            )
            session.add(row)
            session.flush()
            row_id = row.id
    finally:
        engine.dispose()
    refused = rescue.api.post(f"/reconciliation/{row_id}/forward")
    assert refused.status_code == 409 and "rescue it first" in refused.text, refused.text

"""The nightly reconciliation: with two retrievers on one catalog, each scanner's check of
a cron slot runs once. The schedule is every minute, so that a slot is due at once."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from services.retriever import reconciling
from services.retriever.settings import RetrieverSettings
from shared.catalog.database import open_catalog
from shared.catalog.reconciliation import ReconciliationRun
from shared.catalog.states import CheckState
from tests.reconciliation.peers import peers_file, site
from tests.support import free_port, wait_for
from tests.system import Dcmdb

pytestmark = [pytest.mark.e2e]


def _runs(url: str) -> list[ReconciliationRun]:
    engine, sessions = open_catalog(url)
    try:
        with sessions() as session:
            return list(session.scalars(select(ReconciliationRun)))
    finally:
        engine.dispose()


def test_each_slot_runs_once_with_two_retrievers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    with site(tmp_path / "peers") as peers:
        dcmdb = Dcmdb(tmp_path / "data", "amqp://guest:guest@127.0.0.1:5672/", url)
        dcmdb.extra_env.update(
            {
                "DCMDB_PACS_FILE": str(peers.peers_file),
                "DCMDB_NIGHTLY_RETRIEVE": "",
                "DCMDB_NIGHTLY_RECONCILE": "* * * * *",
                "DCMDB_POLL_INTERVAL": "0.2",
            }
        )
        dcmdb.start("retriever", name="first")
        dcmdb.start("retriever", name="second")
        try:
            wait_for(
                lambda: any(run.state == CheckState.CHECKED for run in _runs(url)),
                60,
                "a nightly reconciliation to run",
            )
            wait_for(lambda: "retrieving to AE" in dcmdb.log("second"), 30, "the second")
            time.sleep(1.5)  # both retrievers go round several more times within the slot
            runs = _runs(url)
        finally:
            dcmdb.stop()
    per_slot = Counter((run.scanner, run.nightly_slot) for run in runs)
    assert per_slot and set(per_slot.values()) == {1}, per_slot
    assert {run.scanner for run in runs} == {"console"}
    checked = [run for run in runs if run.state == CheckState.CHECKED]
    assert checked[0].missing == 3 and checked[0].studies == 4


def test_rescue_off_runs_no_nightly_check(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    peers = peers_file(tmp_path, ("CONSOLE", free_port()), ("PACS", free_port()))
    engine, sessions = open_catalog(url, writer=True)
    try:
        for rescue, runs in (("off", 0), ("report", 1)):
            settings = RetrieverSettings(
                pacs_file=peers,
                database_url=url,
                data_dir=tmp_path / "data",
                nightly_reconcile="* * * * *",
                rescue=rescue,  # type: ignore[arg-type]
            )
            reconciling.schedule(settings, sessions)
            assert len(_runs(url)) == runs, rescue
    finally:
        engine.dispose()

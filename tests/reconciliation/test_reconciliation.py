"""The reconciliation of a scanner (dcmqrscp) with the PACS (dcmqrscp): exactly what the
PACS lacks of the scanner's keep window, with the day the scanner deletes it; closed once
the PACS has it; `dcmdb reconcile` printing it and exiting 3."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.catalog.database import open_catalog
from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import CheckState, DifferenceKind, DifferenceState, Resolution
from shared.reconciliation import reconcile_scanner
from tests.reconciliation.peers import Site, site
from tests.system import REPO

pytestmark = [pytest.mark.integration]


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Site]:
    with site(tmp_path) as found:
        yield found


def _differences(url: str) -> list[Difference]:
    engine, sessions = open_catalog(url)
    try:
        with sessions() as session:
            return list(session.scalars(select(Difference).order_by(Difference.id)))
    finally:
        engine.dispose()


def _run(url: str, run_id: int) -> ReconciliationRun:
    engine, sessions = open_catalog(url)
    try:
        with sessions() as session:
            run = session.get(ReconciliationRun, run_id)
            assert run is not None
            return run
    finally:
        engine.dispose()


def _reconcile(peers: Site, url: str) -> int:
    settings = peers.settings(url)
    engine, sessions = open_catalog(url, writer=True)
    try:
        run_id = reconcile_scanner(settings, sessions, settings.scanner("console"))
    finally:
        engine.dispose()
    assert run_id is not None
    return run_id


def test_the_report_lists_exactly_what_the_pacs_lacks_with_deadlines(
    peers: Site, catalog_url: str
) -> None:
    # dcmqrscp gives no instance counts: they are counted at image level, one query a study.
    assert not peers.scanner.gives_counts and not peers.pacs.gives_counts
    run = _run(catalog_url, _reconcile(peers, catalog_url))
    assert (run.state, run.reason, run.studies) == (CheckState.CHECKED, "", 4)
    assert run.associations == 2  # one with the scanner, one with the PACS, for 4 studies
    studies = peers.studies
    found = {
        (row.study_uid, row.series_uid, row.kind, row.scanner_instances, row.pacs_instances)
        for row in _differences(catalog_url)
    }
    assert found == {
        (studies.missing.uid, "", DifferenceKind.STUDY_MISSING, 5, 0),
        (studies.partial.uid, studies.partial.series_uids[1], DifferenceKind.SERIES_MISSING, 3, 0),
        (studies.short.uid, studies.short.series_uids[0], DifferenceKind.INSTANCES_MISSING, 4, 2),
    }
    for row in _differences(catalog_url):
        study = next(
            s for s in (studies.missing, studies.partial, studies.short) if s.uid == row.study_uid
        )
        assert row.deadline == study.date + dt.timedelta(days=14)
        assert row.state == DifferenceState.OPEN
        assert row.lab == ("JONES_ANN" if study is studies.missing else "SMITH_JOHN")


def test_a_difference_the_pacs_then_holds_is_closed_with_when_and_how(
    peers: Site, catalog_url: str, tmp_path: Path
) -> None:
    _reconcile(peers, catalog_url)
    studies = peers.studies
    peers.pacs.fill(studies.short.write(tmp_path / "late"))  # the rest of the short series
    _reconcile(peers, catalog_url)
    rows = _differences(catalog_url)
    assert len(rows) == 3  # brought up to date, not recorded again
    closed = [row for row in rows if row.state == DifferenceState.CLOSED]
    assert [(row.study_uid, row.resolution) for row in closed] == [
        (studies.short.uid, Resolution.ON_PACS)
    ]
    assert closed[0].closed_at is not None


def test_dcmdb_reconcile_prints_the_differences_and_exits_3(peers: Site, catalog_url: str) -> None:
    env = {
        "DCMDB_PACS_FILE": str(peers.peers_file),
        "DCMDB_DATABASE_URL": catalog_url,
        "DCMDB_DATA_DIR": str(peers.peers_file.parent / "data"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "reconcile", "--scanner", "console"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "scanner console: 4 studies" in result.stdout
    for study in (peers.studies.missing, peers.studies.partial, peers.studies.short):
        assert study.uid in result.stdout
        assert str(study.date + dt.timedelta(days=14)) in result.stdout
    assert peers.studies.old.uid not in result.stdout
    assert peers.studies.complete.uid not in result.stdout

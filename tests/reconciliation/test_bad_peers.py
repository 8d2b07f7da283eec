"""Scanners and PACS that cannot be asked: down, refusing, or silent. Each makes a failed
run with a reason a person can act on, leaves what was open open, and never reads as
"nothing missing"."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.catalog.database import open_catalog
from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import CheckState, DifferenceState
from shared.reconciliation import reconcile_scanner
from tests.reconciliation.peers import Site, peers_file, site
from tests.support import free_port
from tests.system import REPO

pytestmark = [pytest.mark.integration]


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Site]:
    with site(tmp_path) as found:
        yield found


def _check(peers: Site, url: str, **settings: object) -> tuple[ReconciliationRun, list[Difference]]:
    values = peers.settings(url, **settings)
    engine, sessions = open_catalog(url, writer=True)
    try:
        run_id = reconcile_scanner(values, sessions, values.scanner("console"))
        with sessions() as session:
            run = session.get(ReconciliationRun, run_id)
            rows = list(session.scalars(select(Difference)))
            assert run is not None
            return run, rows
    finally:
        engine.dispose()


def _open(rows: list[Difference]) -> int:
    return sum(row.state != DifferenceState.CLOSED for row in rows)


def test_a_scanner_down_is_a_failed_run_and_leaves_the_differences_open(
    peers: Site, catalog_url: str
) -> None:
    run, rows = _check(peers, catalog_url)
    assert run.state == CheckState.CHECKED and _open(rows) == 3
    peers.scanner.stop()
    run, rows = _check(peers, catalog_url)
    assert run.state == CheckState.FAILED
    assert "scanner could not be asked" in run.reason and "unreachable" in run.reason
    assert "console" in run.reason
    assert _open(rows) == 3  # not closed for want of an answer


def test_a_pacs_down_records_nothing_as_missing(peers: Site, catalog_url: str) -> None:
    peers.pacs.stop()
    run, rows = _check(peers, catalog_url)
    assert run.state == CheckState.FAILED
    assert "the PACS could not be asked" in run.reason and "unreachable" in run.reason
    assert rows == []  # a PACS that cannot be asked is not a PACS without the studies


def test_a_scanner_that_refuses_us_says_so(peers: Site, catalog_url: str, tmp_path: Path) -> None:
    peers.peers_file = peers_file(
        tmp_path / "other", ("NOT_THE_CONSOLE", peers.scanner.port), ("PACS", peers.pacs.port)
    )
    run, _ = _check(peers, catalog_url)
    assert run.state == CheckState.FAILED
    # dcmqrscp closes the connection right after its rejection; now and then pynetdicom sees
    # the close first, and knows only that. Never a time-out: the refusal comes at once.
    assert re.search(
        r"association rejected by scanner console .*AE title"
        r"|scanner console .* closed the connection without answering",
        run.reason,
    ), run.reason


def test_a_silent_scanner_is_given_up_on_after_the_timeout(
    peers: Site, catalog_url: str, tmp_path: Path
) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        peers.peers_file = peers_file(
            tmp_path / "other", ("CONSOLE", silent.getsockname()[1]), ("PACS", peers.pacs.port)
        )
        run, _ = _check(peers, catalog_url, reconcile_timeout=1)
    assert run.state == CheckState.FAILED
    assert "did not answer" in run.reason and "1 s" in run.reason, run.reason


def test_dcmdb_reconcile_prints_a_scanner_it_could_not_ask_and_exits_3(
    tmp_path: Path, catalog_url: str
) -> None:
    path = peers_file(tmp_path / "peers", ("CONSOLE", free_port()), ("PACS", free_port()))
    result = subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "reconcile"],
        cwd=REPO,
        env={
            "DCMDB_PACS_FILE": str(path),
            "DCMDB_DATABASE_URL": catalog_url,
            "DCMDB_DATA_DIR": str(tmp_path / "data"),
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "scanner console: NOT CHECKED: the scanner could not be asked" in result.stdout

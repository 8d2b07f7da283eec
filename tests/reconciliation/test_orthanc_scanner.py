"""Orthanc as the scanner (it gives instance counts at series level, so nothing is counted
at image level), dcmqrscp as the PACS: the same differences as with dcmqrscp."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.catalog.database import open_catalog
from shared.catalog.reconciliation import Difference
from shared.catalog.states import DifferenceKind
from shared.reconciliation import reconcile_scanner
from tests.pacs_peers import Orthanc
from tests.reconciliation.peers import site

pytestmark = [pytest.mark.integration]


def test_orthanc_as_the_scanner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    with site(tmp_path / "peers", scanner_kind=Orthanc) as peers:
        assert peers.scanner.gives_counts
        settings = peers.settings(url)
        engine, sessions = open_catalog(url, writer=True)
        try:
            reconcile_scanner(settings, sessions, settings.scanner("console"))
            with sessions() as session:
                rows = list(session.scalars(select(Difference)))
        finally:
            engine.dispose()
    s = peers.studies
    assert {
        (r.study_uid, r.series_uid, r.kind, r.scanner_instances, r.pacs_instances) for r in rows
    } == {
        (s.missing.uid, "", DifferenceKind.STUDY_MISSING, 5, 0),
        (s.partial.uid, s.partial.series_uids[1], DifferenceKind.SERIES_MISSING, 3, 0),
        (s.short.uid, s.short.series_uids[0], DifferenceKind.INSTANCES_MISSING, 4, 2),
    }
    assert {r.deadline for r in rows} == {
        study.date + dt.timedelta(days=14) for study in (s.missing, s.partial, s.short)
    }

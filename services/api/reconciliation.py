"""What ``/reconciliation`` answers, and the forward of a rescued study to the PACS.

The rows come from `shared.reconciliation_report`, filtered to the caller's labs (the lab
of a row is its study's referring physician's folder, as the sorter files it). A
forward sends what dcmdb holds of the difference (the whole study, or the series the PACS
lacks) to the default PACS by C-STORE: only on an admin's request, and only once dcmdb
holds all of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.api.dependencies import archive_file
from services.api.settings import ApiSettings
from services.api.studies import instance_paths
from shared.catalog.models import LISTED, Series, Study
from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import CheckState, DifferenceKind, DifferenceState
from shared.catalog.types import now
from shared.errors import PacsError
from shared.pacs_store import store_files
from shared.rescue import held_in_full


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", from_attributes=True)


class DifferenceView(_Model):
    """A study or series a scanner holds and the PACS lacks, in part or whole."""

    id: int
    scanner: str
    lab: str
    study_uid: str
    series_uid: str  # "" for the whole study
    kind: DifferenceKind
    state: DifferenceState
    study_date: dt.date
    deadline: dt.date  # the day the scanner deletes the study
    scanner_instances: int
    pacs_instances: int
    found_at: dt.datetime
    checked_at: dt.datetime
    closed_at: dt.datetime | None
    resolution: str
    retrieval_job_id: int | None
    forwarded_at: dt.datetime | None


class ScannerRun(_Model):
    """A scanner's latest check; a failed one says why (it is tried again next night)."""

    id: int
    scanner: str
    pacs: str
    state: CheckState
    reason: str
    first_day: dt.date
    last_day: dt.date
    studies: int
    missing: int
    associations: int
    started_at: dt.datetime
    finished_at: dt.datetime | None


class ReconciliationReport(_Model):
    runs: list[ScannerRun]
    differences: list[DifferenceView]


class Forwarded(_Model):
    difference: DifferenceView
    pacs: str
    sent: int
    failed: int


def report(runs: list[ReconciliationRun], rows: list[Difference]) -> ReconciliationReport:
    return ReconciliationReport(
        runs=[ScannerRun.model_validate(run) for run in runs],
        differences=[DifferenceView.model_validate(row) for row in rows],
    )


async def forward(
    settings: ApiSettings, sessions: sessionmaker[Session], difference_id: int
) -> Forwarded:
    try:
        pacs = settings.peer(None)
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None  # nothing in the request to correct
    with sessions() as session:
        row = session.get(Difference, difference_id)
        if row is None:
            raise HTTPException(404, f"no reconciliation difference {difference_id}")
        if not held_in_full(session, row):
            raise HTTPException(
                409,
                "dcmdb does not hold all the scanner listed of it: rescue it first "
                "(DCMDB_RESCUE=fetch)",
            )
        paths = [archive_file(settings, path) for path in _paths(session, row)]
    try:
        stored = await asyncio.to_thread(store_files, pacs, paths)
    except PacsError as exc:
        raise HTTPException(502, str(exc)) from None
    with sessions() as session, session.begin():
        row = session.get(Difference, difference_id)
        assert row is not None
        if stored.failed == 0:
            row.forwarded_at = now()
        view = DifferenceView.model_validate(row)
    return Forwarded(difference=view, pacs=pacs.name, sent=stored.sent, failed=stored.failed)


def _paths(session: Session, row: Difference) -> list[str]:
    statement = (
        select(Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == row.study_uid, LISTED)
    )
    if row.kind != DifferenceKind.STUDY_MISSING:
        statement = statement.where(Series.series_instance_uid == row.series_uid)
    return instance_paths(session, list(session.scalars(statement)))

"""What the reconciliation found, as people read it: the differences (filtered by scanner,
state, deadline and the caller's labs) and each scanner's latest run. The API's
``GET /reconciliation``, its web panel and ``dcmdb reconcile`` all read it from here."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import DifferenceState


@dataclass(frozen=True)
class Filters:
    scanner: str | None = None
    state: DifferenceState | None = None
    deadline_before: dt.date | None = None  # on or before this day
    labs: frozenset[str] | None = None  # None: every lab
    limit: int = 500


def differences(session: Session, filters: Filters) -> list[Difference]:
    """The nearest deadlines first."""
    statement = select(Difference).order_by(Difference.deadline, Difference.id)
    if filters.scanner is not None:
        statement = statement.where(Difference.scanner == filters.scanner)
    if filters.state is not None:
        statement = statement.where(Difference.state == filters.state)
    if filters.deadline_before is not None:
        statement = statement.where(Difference.deadline <= filters.deadline_before)
    if filters.labs is not None:
        statement = statement.where(Difference.lab.in_(sorted(filters.labs)))
    return list(session.scalars(statement.limit(filters.limit)))


def latest_runs(session: Session, scanner: str | None = None) -> list[ReconciliationRun]:
    """Each scanner's newest run (a failed one says why)."""
    newest = select(func.max(ReconciliationRun.id)).group_by(ReconciliationRun.scanner)
    if scanner is not None:
        newest = newest.where(ReconciliationRun.scanner == scanner)
    statement = select(ReconciliationRun).where(ReconciliationRun.id.in_(newest))
    return list(session.scalars(statement.order_by(ReconciliationRun.scanner)))


def not_closed(rows: list[Difference]) -> list[Difference]:
    return [row for row in rows if row.state != DifferenceState.CLOSED]

"""Rescue: what the PACS lacks, retrieved from the scanner into dcmdb before the scanner
deletes it (``DCMDB_RESCUE=fetch``).

Each study with open differences gets one retrieval job (origin ``rescue``, run by the
retriever against the scanner) of the whole study, or of only the series the PACS lacks
in part. Once the job has ended, the difference is closed as rescued when the catalog
holds every instance the scanner listed, and reopened (to be fetched again) otherwise.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.catalog.models import RetrievalJob
from shared.catalog.reconciliation import Difference
from shared.catalog.states import DifferenceKind, DifferenceState, Resolution
from shared.catalog.types import now
from shared.retrievals import RESCUE, catalog_series_counts, new_job


def rescue(session: Session, scanner: str) -> list[int]:
    """A retrieval job for each study of the scanner with open differences; their ids."""
    by_study: dict[str, list[Difference]] = defaultdict(list)
    for row in session.scalars(
        select(Difference).where(
            Difference.scanner == scanner, Difference.state == DifferenceState.OPEN
        )
    ):
        by_study[row.study_uid].append(row)
    jobs = []
    for study_uid, rows in sorted(by_study.items()):
        whole = any(row.kind == DifferenceKind.STUDY_MISSING for row in rows)
        series = [] if whole else sorted(row.series_uid for row in rows)
        job = new_job(
            session,
            origin=RESCUE,
            pacs=scanner,
            query={"study_uid": study_uid},
            studies=[(study_uid, series)],
        )
        for row in rows:
            row.state, row.retrieval_job_id = DifferenceState.RESCUING, job.id
        jobs.append(job.id)
    return jobs


def settle_rescues(session: Session, scanner: str) -> None:
    """Close as rescued what the ended jobs brought in full; reopen the rest."""
    rows = session.scalars(
        select(Difference).where(
            Difference.scanner == scanner, Difference.state == DifferenceState.RESCUING
        )
    ).all()
    for row in rows:
        job = session.get(RetrievalJob, row.retrieval_job_id) if row.retrieval_job_id else None
        if job is not None and not job.state.finished:
            continue
        if held_in_full(session, row):
            row.state, row.resolution, row.closed_at = (
                DifferenceState.CLOSED,
                Resolution.RESCUED,
                now(),
            )
        else:
            row.state = DifferenceState.OPEN


def held_in_full(session: Session, row: Difference) -> bool:
    """Whether the catalog holds every instance the scanner listed of it."""
    held = catalog_series_counts(session, row.study_uid)
    if row.kind == DifferenceKind.STUDY_MISSING:
        return sum(held.values()) >= row.scanner_instances
    return held.get(row.series_uid, 0) >= row.scanner_instances

"""Retrieval jobs in the catalog: recorded by the API, run by the retriever.

A job lives in the catalog from the request to its end, so that it survives a restart of
any service: the retriever claims a queued job (or a running one whose worker went quiet
for the lease) with one conditional UPDATE, touches it while it runs, and records each
study's progress as the PACS reports it. Cancelling is a flag the running worker reads
between the PACS's answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import LISTED, RetrievalJob, RetrievalStudy, Series, Study
from shared.catalog.states import JobState
from shared.catalog.types import now

# The origin of a job that fetches from a scanner what the PACS lacks (shared.rescue).
RESCUE = "rescue"


def new_job(
    session: Session,
    *,
    origin: str,
    pacs: str,
    query: dict[str, Any],
    nightly_slot: str | None = None,
    studies: Iterable[tuple[str, list[str]]] = (),
    requested_by: str | None = None,
    labs: frozenset[str] | None = None,
) -> RetrievalJob:
    """A queued job; `studies` (study UID, only these series) when known already (repair).
    A job with `labs` moves only the studies whose referring physician files into one of
    those lab folders."""
    job = RetrievalJob(
        state=JobState.QUEUED,
        origin=origin,
        pacs=pacs,
        query=json.dumps(query, sort_keys=True),
        nightly_slot=nightly_slot,
        created_at=now(),
        attempts=0,
        cancel_requested=False,
        reason="",
        gaps="",
        requested_by=requested_by,
        labs=None if labs is None else json.dumps(sorted(labs)),
    )
    for study_uid, series_uids in studies:
        job.studies.append(_study_row(study_uid, series_uids))
    session.add(job)
    session.flush()
    return job


def _study_row(study_uid: str, series_uids: list[str] | None = None) -> RetrievalStudy:
    return RetrievalStudy(
        study_uid=study_uid,
        state=JobState.QUEUED,
        series_uids=json.dumps(series_uids or []),
        completed=0,
        failed=0,
        warning=0,
        reason="",
    )


def add_studies(sessions: sessionmaker[Session], job_id: int, study_uids: list[str]) -> None:
    """The matches of the job's C-FIND, once (a resumed job keeps the rows it has)."""
    with sessions.begin() as session:
        known = set(
            session.scalars(select(RetrievalStudy.study_uid).where(RetrievalStudy.job_id == job_id))
        )
        for uid in study_uids:
            if uid not in known:
                row = _study_row(uid)
                row.job_id = job_id
                session.add(row)
                known.add(uid)


def claim(sessions: sessionmaker[Session], lease: float) -> int | None:
    """Take the oldest queued job, or a running one nobody touched for `lease` seconds."""
    stale = now() - timedelta(seconds=lease)
    with sessions.begin() as session:
        candidates = session.execute(
            select(RetrievalJob.id, RetrievalJob.state, RetrievalJob.heartbeat_at)
            .where(
                or_(
                    RetrievalJob.state == JobState.QUEUED,
                    (RetrievalJob.state == JobState.RUNNING) & (RetrievalJob.heartbeat_at < stale),
                )
            )
            .order_by(RetrievalJob.id)
            .limit(5)
        ).all()
        for job_id, state, heartbeat in candidates:
            moment = now()
            taken = session.execute(
                update(RetrievalJob)
                .where(
                    RetrievalJob.id == job_id,
                    RetrievalJob.state == state,
                    (RetrievalJob.heartbeat_at == heartbeat)
                    if heartbeat is not None
                    else RetrievalJob.heartbeat_at.is_(None),
                )
                .values(
                    state=JobState.RUNNING,
                    heartbeat_at=moment,
                    started_at=func.coalesce(RetrievalJob.started_at, moment),
                    attempts=RetrievalJob.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(taken, "rowcount", 0) == 1:
                return int(job_id)
    return None


def touch(sessions: sessionmaker[Session], job_id: int) -> bool:
    """Keep the lease of a running job; whether someone asked to cancel it."""
    with sessions.begin() as session:
        session.execute(
            update(RetrievalJob)
            .where(RetrievalJob.id == job_id, RetrievalJob.state == JobState.RUNNING)
            .values(heartbeat_at=now())
            .execution_options(synchronize_session=False)
        )
        return bool(
            session.scalar(select(RetrievalJob.cancel_requested).where(RetrievalJob.id == job_id))
        )


def update_study(sessions: sessionmaker[Session], row_id: int, **values: Any) -> None:
    with sessions.begin() as session:
        session.execute(
            update(RetrievalStudy)
            .where(RetrievalStudy.id == row_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def finish(
    sessions: sessionmaker[Session],
    job_id: int,
    state: JobState,
    reason: str = "",
    gaps: list[dict[str, Any]] | None = None,
) -> None:
    with sessions.begin() as session:
        values: dict[str, Any] = {"state": state, "reason": reason, "finished_at": now()}
        if gaps is not None:
            values["gaps"] = json.dumps(gaps)
        session.execute(
            update(RetrievalJob)
            .where(RetrievalJob.id == job_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def jobs_by_state(session: Session) -> dict[JobState, int]:
    """How many jobs the catalog holds in each state (every state, 0 included)."""
    counts = dict.fromkeys(JobState, 0)
    query = select(RetrievalJob.state, func.count()).group_by(RetrievalJob.state)
    for state, count in session.execute(query):
        counts[state] = count
    return counts


def request_cancel(session: Session, job_id: int) -> RetrievalJob | None:
    """A queued job is cancelled at once; a running one when its worker next looks."""
    job = session.get(RetrievalJob, job_id)
    if job is None or job.state.finished:
        return job
    if job.state == JobState.QUEUED:
        job.state, job.finished_at, job.reason = (
            JobState.CANCELLED,
            now(),
            "cancelled before it ran",
        )
    else:
        job.cancel_requested = True
    return job


def filed_instances(session: Session, study_uids: Iterable[str]) -> dict[str, int]:
    """How many instances of each study the catalog holds."""
    uids = sorted(set(study_uids))
    if not uids:
        return {}
    rows = session.execute(
        select(Study.study_instance_uid, func.coalesce(func.sum(Series.instance_count), 0))
        .join(Series, Series.study_pk == Study.id)
        .where(Study.study_instance_uid.in_(uids), LISTED)
        .group_by(Study.study_instance_uid)
    ).all()
    return {uid: int(count) for uid, count in rows}


def catalog_series_counts(session: Session, study_uid: str) -> dict[str, int]:
    """Instances the catalog holds per series of a study."""
    rows = session.execute(
        select(Series.series_instance_uid, Series.instance_count)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_uid, LISTED)
    ).all()
    return {uid: int(count) for uid, count in rows}

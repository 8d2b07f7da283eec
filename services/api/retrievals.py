"""PACS retrievals as the API sees them: a request checked and turned into a job, a job
and a completeness check as the API answers them.

The API only records a job in the catalog (the retriever runs it). The completeness check
asks the PACS directly (a C-FIND per series).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import HTTPException
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from services.api.parameters import date_range, invalid
from services.api.schemas import (
    PacsCheck,
    Retrieval,
    RetrievalRequest,
    RetrievalStudyProgress,
    SeriesComparison,
)
from services.api.settings import ApiSettings
from shared import retrievals
from shared.catalog.models import RetrievalJob, Study
from shared.errors import PacsError
from shared.keys import Caller
from shared.naming import PhysicianAliases, physician_folder
from shared.pacs_check import StudyCheck, check_study
from shared.pacs_find import StudyQuery, find_studies
from shared.peers import Peer


def requested_query(settings: ApiSettings, body: RetrievalRequest) -> tuple[str, dict[str, Any]]:
    """The PACS and the C-FIND keys of a request; a 422 naming what is wrong."""
    query = body.model_dump(exclude={"pacs"}, exclude_none=True)
    if not query:
        raise invalid("body", "query", "give at least one key: study_date, patient_id, ...")
    if "study_date" in query:
        try:
            day = date_range(query["study_date"])
        except ValueError as exc:
            raise invalid("body", "study_date", str(exc)) from None
        query["study_date"] = _dicom_range(day.first, day.last)
    try:
        peer = settings.peer(body.pacs)
    except ValueError as exc:
        raise invalid("body", "pacs", str(exc)) from None
    StudyQuery(**query)  # the checks above leave nothing it could refuse
    return peer.name, query


def lab_retrieval(caller: Caller, body: RetrievalRequest, aliases: PhysicianAliases | None) -> None:
    """A key of some labs retrieves only their studies (the retriever leaves the others):
    a referring physician named outside them is a 422 rather than a job that finds
    nothing."""
    name = body.referring_physician
    if caller.labs is None or name is None or "*" in name or "?" in name:
        return
    if physician_folder(name, aliases) not in caller.labs:
        raise invalid(
            "body",
            "referring_physician",
            f"this key retrieves the studies of {', '.join(sorted(caller.labs))} only",
        )


def visible_jobs(caller: Caller) -> list[ColumnElement[bool]]:
    """The jobs a caller follows: all for a key of every lab, else the key's own."""
    return [] if caller.labs is None else [RetrievalJob.requested_by == caller.name]


async def compare_with_pacs(
    settings: ApiSettings,
    sessions: sessionmaker[Session],
    study_uid: str,
    pacs: str | None,
    labs: frozenset[str] | None = None,
) -> StudyCheck:
    """The study on the PACS beside the catalog; 404 when neither knows it, or when it is
    of a lab not in `labs` (None: every lab), 502 when the PACS cannot be asked."""
    try:
        peer = settings.peer(pacs)
    except ValueError as exc:
        raise invalid("query", "pacs", str(exc)) from None
    not_there = HTTPException(
        404, f"study {study_uid!r} is neither on {peer.name} nor in the catalog"
    )
    try:
        if labs is not None and not await asyncio.to_thread(
            _of_labs, peer, sessions, study_uid, labs, settings.aliases()
        ):
            raise not_there
        check = await asyncio.to_thread(check_study, peer, sessions, study_uid)
    except PacsError as exc:
        raise HTTPException(502, f"the PACS could not be asked: {exc}") from None
    if not check.series:
        with sessions() as session:
            known = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        if known is None:
            raise not_there
    return check


def _of_labs(
    peer: Peer,
    sessions: sessionmaker[Session],
    study_uid: str,
    labs: frozenset[str],
    aliases: PhysicianAliases | None,
) -> bool:
    """Whether the study is of one of `labs`: by its folder in the catalog, else by its
    referring physician on the PACS, filed as the sorter would file it."""
    with sessions() as session:
        folder = session.scalar(
            select(Study.physician_folder).where(Study.study_instance_uid == study_uid)
        )
    if folder is None:
        found = find_studies(peer, StudyQuery(study_uid=study_uid))
        return any(physician_folder(m.referring_physician, aliases) in labs for m in found)
    return folder in labs


def _dicom_range(first: str | None, last: str | None) -> str:
    if first == last and first is not None:
        return first
    return f"{first or ''}-{last or ''}"


def job_view(session: Session, job_id: int) -> Retrieval:
    job = session.scalar(
        select(RetrievalJob)
        .where(RetrievalJob.id == job_id)
        .options(selectinload(RetrievalJob.studies))
        .execution_options(populate_existing=True)
    )
    if job is None:
        raise HTTPException(404, f"no retrieval job {job_id}")
    filed = retrievals.filed_instances(session, [s.study_uid for s in job.studies])
    return Retrieval(
        id=job.id,
        state=job.state,
        origin=job.origin,  # type: ignore[arg-type]
        pacs=job.pacs,
        query=json.loads(job.query),
        nightly_slot=job.nightly_slot,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        reason=job.reason,
        gaps=json.loads(job.gaps) if job.gaps else [],
        studies=[
            RetrievalStudyProgress(
                study_uid=s.study_uid,
                state=s.state,
                series_uids=json.loads(s.series_uids or "[]"),
                expected_series=s.expected_series,
                expected_instances=s.expected_instances,
                completed=s.completed,
                failed=s.failed,
                warning=s.warning,
                remaining=s.remaining,
                filed=filed.get(s.study_uid, 0),
                reason=s.reason,
            )
            for s in job.studies
        ],
    )


def check_view(check: StudyCheck) -> PacsCheck:
    return PacsCheck(
        study_uid=check.study_uid,
        pacs=check.pacs,
        complete=check.complete,
        missing_series=check.missing_series,
        missing_instances=check.missing_instances,
        series=[
            SeriesComparison(
                series_uid=s.series_uid,
                number=s.number,
                modality=s.modality,
                description=s.description,
                pacs_instances=s.pacs_instances,
                catalog_instances=s.catalog_instances,
                missing=s.missing,
            )
            for s in check.series
        ],
        only_in_catalog=list(check.only_in_catalog),
    )

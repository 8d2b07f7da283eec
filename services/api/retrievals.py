"""Routes of PACS retrievals: start, follow and cancel jobs; check and repair a study.

The API only records a job in the catalog (the retriever runs it) and answers 202 with
its id. The completeness check asks the PACS directly (a C-FIND per series).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from services.api.access import ADMIN, READ, SessionDep, WriterSessionDep
from services.api.parameters import date_range, invalid
from services.api.schemas import (
    UID_PATTERN,
    PacsCheck,
    Problem,
    Retrieval,
    RetrievalRequest,
    RetrievalStudyProgress,
    SeriesComparison,
)
from services.api.settings import ApiSettings
from shared import retrievals
from shared.catalog.models import RetrievalJob, Study
from shared.catalog.states import JobState
from shared.errors import PacsError
from shared.pacs_check import StudyCheck, check_study
from shared.pacs_find import StudyQuery

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such job or study"}
}
_PACS_AWAY: dict[int | str, dict[str, Any]] = {
    502: {"model": Problem, "description": "The PACS could not be asked"}
}

router = APIRouter(tags=["retrievals"])


JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A job id")]
# Goes to the PACS as a C-FIND key: see UID_PATTERN.
StudyUid = Annotated[str, Path(pattern=UID_PATTERN, description="A study UID")]


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


@router.post(
    "/retrievals",
    dependencies=ADMIN,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Retrieval,
    responses={400: {"model": Problem, "description": "The body is not JSON"}},
)
def start_retrieval(
    request: Request, body: RetrievalRequest, session: WriterSessionDep
) -> Retrieval:
    """Queue a retrieval: a C-FIND at study level, then a C-MOVE of each match to dcmdb."""
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
        peer = _settings(request).peer(body.pacs)
    except ValueError as exc:
        raise invalid("body", "pacs", str(exc)) from None
    StudyQuery(**query)  # the checks above leave nothing it could refuse
    with session.begin():
        job = retrievals.new_job(session, origin="request", pacs=peer.name, query=query)
        job_id = job.id
    return _job_view(session, job_id)


@router.get("/retrievals", dependencies=READ, response_model=list[Retrieval])
def list_retrievals(
    session: SessionDep,
    state: Annotated[JobState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[Retrieval]:
    """The newest jobs first."""
    statement = select(RetrievalJob.id).order_by(RetrievalJob.id.desc()).limit(limit)
    if state is not None:
        statement = statement.where(RetrievalJob.state == state)
    return [_job_view(session, job_id) for job_id in session.scalars(statement)]


@router.get(
    "/retrievals/{job_id}", dependencies=READ, response_model=Retrieval, responses=_NOT_FOUND
)
def get_retrieval(job_id: JobId, session: SessionDep) -> Retrieval:
    return _job_view(session, job_id)


@router.delete(
    "/retrievals/{job_id}",
    dependencies=ADMIN,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Retrieval,
    responses=_NOT_FOUND,
)
def cancel_retrieval(job_id: JobId, session: WriterSessionDep) -> Retrieval:
    """Cancel: a queued job at once; a running one sends C-CANCEL at the PACS's next answer."""
    with session.begin():
        if retrievals.request_cancel(session, job_id) is None:
            raise HTTPException(404, f"no retrieval job {job_id}")
    return _job_view(session, job_id)


@router.get(
    "/studies/{study_uid}/pacs-check",
    dependencies=READ,
    response_model=PacsCheck,
    responses={**_NOT_FOUND, **_PACS_AWAY},
    tags=["studies"],
)
async def pacs_check(
    request: Request,
    study_uid: StudyUid,
    pacs: Annotated[str | None, Query(max_length=64, description="A configured PACS")] = None,
) -> PacsCheck:
    """The PACS's series and instance counts beside the catalog's, and what is missing."""
    check = await _check(request, study_uid, pacs)
    return _check_view(check)


@router.post(
    "/studies/{study_uid}/repair",
    dependencies=ADMIN,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Retrieval,
    responses={**_NOT_FOUND, **_PACS_AWAY, 409: {"model": Problem, "description": "Complete"}},
    tags=["studies"],
)
async def repair(
    request: Request,
    study_uid: StudyUid,
    pacs: Annotated[str | None, Query(max_length=64, description="A configured PACS")] = None,
) -> Retrieval:
    """Queue a move of only the series the check finds incomplete."""
    check = await _check(request, study_uid, pacs)
    if check.complete:
        raise HTTPException(409, "the study is complete: nothing to repair")
    with request.app.state.writer_sessions() as session:
        with session.begin():
            job = retrievals.new_job(
                session,
                origin="repair",
                pacs=check.pacs,
                query={"study_uid": study_uid},
                studies=[(study_uid, check.missing_series)],
            )
            job_id = job.id
        return _job_view(session, job_id)


async def _check(request: Request, study_uid: str, pacs: str | None) -> StudyCheck:
    try:
        peer = _settings(request).peer(pacs)
    except ValueError as exc:
        raise invalid("query", "pacs", str(exc)) from None
    sessions = request.app.state.sessions
    try:
        check = await asyncio.to_thread(check_study, peer, sessions, study_uid)
    except PacsError as exc:
        raise HTTPException(502, f"the PACS could not be asked: {exc}") from None
    if not check.series:
        with sessions() as session:
            known = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        if known is None:
            raise HTTPException(
                404, f"study {study_uid!r} is neither on {peer.name} nor in the catalog"
            )
    return check


def _dicom_range(first: str | None, last: str | None) -> str:
    if first == last and first is not None:
        return first
    return f"{first or ''}-{last or ''}"


def _job_view(session: Session, job_id: int) -> Retrieval:
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


def _check_view(check: StudyCheck) -> PacsCheck:
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

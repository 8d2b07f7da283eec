"""Routes of PACS retrievals: start, follow and cancel jobs; check and repair a study.

A job is only recorded here, answered 202 with its id; the retriever runs it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.api.audit import audit_note, audited
from services.api.dependencies import (
    ADMIN,
    READ,
    CallerDep,
    JobId,
    PacsStudyUid,
    SessionDep,
    SessionsDep,
    SettingsDep,
    WriterSessionDep,
    WriterSessionsDep,
    not_found_answer,
)
from services.api.retrievals import (
    check_view,
    compare_with_pacs,
    job_view,
    lab_retrieval,
    requested_query,
    visible_jobs,
)
from services.api.schemas import PacsCheck, Problem, Retrieval, RetrievalRequest
from shared import retrievals
from shared.catalog.models import RetrievalJob
from shared.catalog.states import AuditAction, JobState
from shared.keys import Caller

_NOT_FOUND = not_found_answer("No such job or study")
_PACS_AWAY: dict[int | str, dict[str, Any]] = {
    502: {"model": Problem, "description": "The PACS could not be asked"}
}

router = APIRouter(tags=["retrievals"])


@router.post(
    "/retrievals",
    dependencies=[*READ, audited(AuditAction.RETRIEVAL_START)],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Retrieval,
    responses={400: {"model": Problem, "description": "The body is not JSON"}},
)
def start_retrieval(
    caller: CallerDep, settings: SettingsDep, body: RetrievalRequest, session: WriterSessionDep
) -> Retrieval:
    """Queue a retrieval: a C-FIND at study level, then a C-MOVE of each match to dcmdb.
    A key of some labs fetches only the matches of its labs."""
    pacs, query = requested_query(settings, body)
    lab_retrieval(caller, body, settings.aliases())
    with session.begin():
        job = retrievals.new_job(
            session,
            origin="request",
            pacs=pacs,
            query=query,
            requested_by=caller.name,
            labs=caller.labs,
        )
        job_id = job.id
    audit_note(job_id=job_id, study_uid=body.study_uid)
    return job_view(session, job_id)


@router.get("/retrievals", dependencies=READ, response_model=list[Retrieval])
def list_retrievals(
    caller: CallerDep,
    session: SessionDep,
    state: Annotated[JobState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[Retrieval]:
    """The newest jobs first: every job for a key of every lab, else the key's own."""
    statement = (
        select(RetrievalJob.id)
        .where(*visible_jobs(caller))
        .order_by(RetrievalJob.id.desc())
        .limit(limit)
    )
    if state is not None:
        statement = statement.where(RetrievalJob.state == state)
    return [job_view(session, job_id) for job_id in session.scalars(statement)]


@router.get(
    "/retrievals/{job_id}", dependencies=READ, response_model=Retrieval, responses=_NOT_FOUND
)
def get_retrieval(caller: CallerDep, job_id: JobId, session: SessionDep) -> Retrieval:
    _own_job(session, job_id, caller)
    return job_view(session, job_id)


@router.delete(
    "/retrievals/{job_id}",
    dependencies=[*READ, audited(AuditAction.RETRIEVAL_CANCEL)],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Retrieval,
    responses=_NOT_FOUND,
)
def cancel_retrieval(caller: CallerDep, job_id: JobId, session: WriterSessionDep) -> Retrieval:
    """Cancel: a queued job at once; a running one sends C-CANCEL at the PACS's next answer.
    A key of some labs cancels its own jobs only."""
    with session.begin():
        _own_job(session, job_id, caller)
        if retrievals.request_cancel(session, job_id) is None:
            raise HTTPException(404, f"no retrieval job {job_id}")
    return job_view(session, job_id)


def _own_job(session: Session, job_id: int, caller: Caller) -> None:
    """404 for a job the caller may not follow, as for one that does not exist."""
    visible = session.scalar(
        select(RetrievalJob.id).where(RetrievalJob.id == job_id, *visible_jobs(caller))
    )
    if visible is None:
        raise HTTPException(404, f"no retrieval job {job_id}")


@router.get(
    "/studies/{study_uid}/pacs-check",
    dependencies=[*READ, audited(AuditAction.STUDY_PACS_CHECK)],
    response_model=PacsCheck,
    responses={**_NOT_FOUND, **_PACS_AWAY},
    tags=["studies"],
)
async def pacs_check(
    caller: CallerDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    study_uid: PacsStudyUid,
    pacs: Annotated[str | None, Query(max_length=64, description="A configured PACS")] = None,
) -> PacsCheck:
    """The PACS's series and instance counts beside the catalog's, and what is missing."""
    return check_view(await compare_with_pacs(settings, sessions, study_uid, pacs, caller.labs))


@router.post(
    "/studies/{study_uid}/repair",
    dependencies=[*ADMIN, audited(AuditAction.STUDY_REPAIR)],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Retrieval,
    responses={**_NOT_FOUND, **_PACS_AWAY, 409: {"model": Problem, "description": "Complete"}},
    tags=["studies"],
)
async def repair(
    caller: CallerDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    writer_sessions: WriterSessionsDep,
    study_uid: PacsStudyUid,
    pacs: Annotated[str | None, Query(max_length=64, description="A configured PACS")] = None,
) -> Retrieval:
    """Queue a move of only the series the check finds incomplete."""
    found = await compare_with_pacs(settings, sessions, study_uid, pacs, caller.labs)
    if found.complete:
        raise HTTPException(409, "the study is complete: nothing to repair")
    with writer_sessions() as session:
        with session.begin():
            job = retrievals.new_job(
                session,
                origin="repair",
                pacs=found.pacs,
                query={"study_uid": study_uid},
                studies=[(study_uid, found.missing_series)],
                requested_by=caller.name,
            )
            job_id = job.id
        audit_note(job_id=job_id)
        return job_view(session, job_id)

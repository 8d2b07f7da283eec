"""The admins' pages: a study checked against the PACS and what is missing fetched,
storage with the next eviction, and pins; and the retrieval jobs with their progress
(every job for an admin of every lab, else the key's own, as the API lists them).

Each form posts to a route here, checked for the session's CSRF token, which does what
the API's route does and sends the browser back to a page (303).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from services.api.audit import audit_note
from services.api.dependencies import (
    JobId,
    SessionDep,
    SessionsDep,
    SettingsDep,
    StudyUid,
    WriterSessionDep,
    WriterSessionsDep,
)
from services.api.retrievals import check_view, compare_with_pacs, job_view, visible_jobs
from services.api.routes.retrievals import repair
from services.api.schemas import UID_PATTERN
from services.api.storage import set_pinned, storage_report
from services.api.web.browse import visible_study
from services.api.web.pages import (
    AdminDep,
    PageError,
    VisitorDep,
    audited_page,
    checked_form,
    local_path,
    render,
)
from shared import retrievals
from shared.catalog.models import LISTED, Patient, RetrievalJob, Study
from shared.catalog.states import AuditAction

router = APIRouter(include_in_schema=False)

JOBS_SHOWN = 50


@router.get(
    "/web/studies/{study_uid}/pacs-check",
    dependencies=[audited_page(AuditAction.STUDY_PACS_CHECK, admin=True)],
)
async def pacs_check_page(
    request: Request,
    visitor: AdminDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    study_uid: StudyUid,
) -> Response:
    with sessions() as session:
        study = visible_study(session, visitor.caller, study_uid)
    try:
        found = await compare_with_pacs(settings, sessions, study_uid, None, visitor.caller.labs)
        check = check_view(found)
    except HTTPException as exc:
        problem = str(exc.detail)
        return render(request, "pacs_check.html", visitor, exc.status_code, study=study,
                      check=None, problem=problem)  # fmt: skip
    except RequestValidationError:  # no PACS configured
        return render(request, "pacs_check.html", visitor, status.HTTP_409_CONFLICT, study=study,
                      check=None, problem="No PACS is configured (DCMDB_PACS).")  # fmt: skip
    return render(request, "pacs_check.html", visitor, study=study, check=check, problem="")


@router.post(
    "/web/studies/{study_uid}/repair",
    dependencies=[audited_page(AuditAction.STUDY_REPAIR, admin=True)],
)
async def repair_study(
    request: Request,
    visitor: AdminDep,
    settings: SettingsDep,
    sessions: SessionsDep,
    writer_sessions: WriterSessionsDep,
    study_uid: StudyUid,
) -> Response:
    await checked_form(request, visitor.session)
    with sessions() as session:
        visible_study(session, visitor.caller, study_uid)
    if not re.fullmatch(UID_PATTERN, study_uid):
        raise PageError(status.HTTP_404_NOT_FOUND, f"No study with UID {study_uid!r} here.")
    try:
        job = await repair(visitor.caller, settings, sessions, writer_sessions, study_uid, None)
    except HTTPException as exc:
        raise PageError(exc.status_code, f"Nothing was fetched: {exc.detail}.") from None
    except RequestValidationError:
        raise PageError(status.HTTP_409_CONFLICT, "No PACS is configured (DCMDB_PACS).") from None
    return RedirectResponse(f"/web/retrievals?queued={job.id}", status.HTTP_303_SEE_OTHER)


@router.get("/web/retrievals")
def retrievals_page(request: Request, visitor: VisitorDep, session: SessionDep) -> Response:
    """Every job for a key of every lab, else the key's own, as GET /retrievals lists them."""
    newest = (
        select(RetrievalJob.id)
        .where(*visible_jobs(visitor.caller))
        .order_by(RetrievalJob.id.desc())
        .limit(JOBS_SHOWN)
    )
    jobs = [job_view(session, job_id) for job_id in session.scalars(newest)]
    queued = request.query_params.get("queued", "")
    return render(
        request, "retrievals.html", visitor, jobs=jobs, queued=queued if queued.isdigit() else ""
    )


@router.post(
    "/web/retrievals/{job_id}/cancel",
    dependencies=[audited_page(AuditAction.RETRIEVAL_CANCEL)],
)
async def cancel_job(
    request: Request, visitor: VisitorDep, job_id: JobId, session: WriterSessionDep
) -> Response:
    """As DELETE /retrievals/{job_id}: a key of some labs cancels its own jobs only."""
    await checked_form(request, visitor.session)
    with session.begin():
        own = session.scalar(
            select(RetrievalJob.id).where(RetrievalJob.id == job_id, *visible_jobs(visitor.caller))
        )
        if own is None or retrievals.request_cancel(session, job_id) is None:
            raise PageError(status.HTTP_404_NOT_FOUND, f"No retrieval job {job_id}.")
    return RedirectResponse("/web/retrievals", status.HTTP_303_SEE_OTHER)


@router.get("/web/storage")
def storage_page(
    request: Request, visitor: AdminDep, settings: SettingsDep, session: SessionDep
) -> Response:
    report = storage_report(session, settings, 100, visitor.caller.labs)
    return render(request, "storage.html", visitor, storage=report)


@router.get("/web/pins", dependencies=[audited_page(AuditAction.STUDIES_LIST, admin=True)])
def pins_page(request: Request, visitor: AdminDep, session: SessionDep) -> Response:
    """The pinned studies, which retention never evicts."""
    statement = (
        select(Study, Patient.patient_name)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(LISTED, Study.pinned.is_(True))
        .order_by(Study.received_at.desc())
    )
    return render(request, "pins.html", visitor, pinned=session.execute(statement).all())


@router.post(
    "/web/studies/{study_uid}/pin",
    dependencies=[audited_page(AuditAction.STUDY_PIN, admin=True)],
)
async def pin_study(
    request: Request, visitor: AdminDep, study_uid: StudyUid, session: WriterSessionDep
) -> Response:
    """Pin (``pinned=1``) or unpin (``pinned=0``), then back to the page of the form."""
    fields = await checked_form(request, visitor.session)
    visible_study(session, visitor.caller, study_uid)
    session.rollback()  # set_pinned begins its own transaction
    if fields.get("pinned") not in ("0", "1"):
        raise PageError(status.HTTP_400_BAD_REQUEST, "Pin with pinned=1, unpin with pinned=0.")
    audit_note(action=AuditAction.STUDY_PIN if fields["pinned"] == "1" else AuditAction.STUDY_UNPIN)
    if not set_pinned(session, study_uid, fields["pinned"] == "1"):
        raise PageError(status.HTTP_404_NOT_FOUND, f"No study with UID {study_uid!r} here.")
    back = local_path(fields.get("back"), f"/web/studies/{study_uid}")
    return RedirectResponse(back, status.HTTP_303_SEE_OTHER)

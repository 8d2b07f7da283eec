"""Routes of studies: the listing with its filters, one study, the labs, and pins."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import AfterValidator
from sqlalchemy.orm import Session

from services.api.audit import audited
from services.api.dependencies import (
    ADMIN,
    READ,
    CallerDep,
    PhysiciansDep,
    SessionDep,
    StudyUid,
    WriterSessionDep,
    not_found,
    not_found_answer,
)
from services.api.parameters import (
    ISO_TIME_PATTERN,
    Cursor,
    DateRange,
    date_range,
    invalid,
    like_pattern,
    optional_utc_time,
)
from services.api.schemas import Physician, Pin, StudyDetail, StudyPage
from services.api.storage import set_pinned
from services.api.studies import StudyFilters, list_studies, physicians, study_detail
from shared.catalog.states import AuditAction

router = APIRouter(tags=["studies"])


def _optional_date_range(value: str | None) -> DateRange | None:
    return None if value is None else date_range(value)


@router.get(
    "/studies",
    dependencies=[*READ, audited(AuditAction.STUDIES_LIST)],
    response_model=StudyPage,
)
def get_studies(
    caller: CallerDep,
    directory: PhysiciansDep,
    session: SessionDep,
    physician: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            description="Lab folder (e.g. SMITH_JOHN) or referring physician name as "
            "sent (e.g. Smith^John), in any case",
        ),
    ] = None,
    patient_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    patient_name: Annotated[
        str | None,
        Query(min_length=1, max_length=256, description="DICOM name, * as wildcard: SMITH*"),
    ] = None,
    study_date: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=32,
            description="YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD-, -YYYYMMDD, today, yesterday",
        ),
        AfterValidator(_optional_date_range),
    ] = None,
    modality: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    accession_number: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    description: Annotated[
        str | None, Query(min_length=1, max_length=256, description="Substring, any case")
    ] = None,
    received_since: Annotated[
        str | None,
        Query(
            pattern=ISO_TIME_PATTERN,
            description="ISO 8601 date or time (2024-05-01T08:00:00Z); naive times are UTC",
        ),
        AfterValidator(optional_utc_time),
    ] = None,
    sort: Annotated[Literal["received", "study_date"], Query()] = "received",
    order: Annotated[Literal["desc", "asc"], Query()] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=2048, description="The 'next' value of the page before")
    ] = None,
) -> StudyPage:
    position = None
    if cursor is not None:
        try:
            position = Cursor.decode(cursor)
        except ValueError as exc:
            raise invalid("query", "cursor", str(exc)) from None
        if (position.sort, position.order) != (sort, order):
            raise invalid("query", "cursor", "the cursor belongs to another sort or order")
    filters = StudyFilters(
        labs=caller.labs,
        physician_folders=directory.folders_for(physician) if physician else None,
        patient_id=patient_id,
        patient_name=like_pattern(patient_name, wildcards=True) if patient_name else None,
        study_date=study_date,  # type: ignore[arg-type]  # a DateRange once validated
        modality=modality.strip().upper() if modality else None,
        accession_number=accession_number,
        description=like_pattern(description, wildcards=False) if description else None,
        received_since=received_since,  # type: ignore[arg-type]  # a datetime once validated
    )
    try:
        items, following = list_studies(
            session, filters, sort=sort, order=order, limit=limit, cursor=position
        )
    except ValueError as exc:
        raise invalid("query", "cursor", str(exc)) from None
    return StudyPage(items=items, next=following)


@router.get(
    "/studies/{study_uid}",
    dependencies=[*READ, audited(AuditAction.STUDY_READ)],
    response_model=StudyDetail,
    responses=not_found_answer("No such study or series"),
)
def get_study(caller: CallerDep, study_uid: StudyUid, session: SessionDep) -> StudyDetail:
    detail = study_detail(session, study_uid, caller.labs)
    if detail is None:
        raise not_found("study", study_uid)
    return detail


@router.get("/physicians", dependencies=READ, response_model=list[Physician])
def get_physicians(caller: CallerDep, session: SessionDep) -> list[Physician]:
    """The labs of the key that hold studies."""
    return physicians(session, caller.labs)


@router.post(
    "/studies/{study_uid}/pin",
    dependencies=[*ADMIN, audited(AuditAction.STUDY_PIN)],
    response_model=Pin,
    responses=not_found_answer("No such study"),
)
def pin_study(study_uid: StudyUid, session: WriterSessionDep) -> Pin:
    """Keep the study: retention never evicts a pinned study."""
    return _pinned(session, study_uid, True)


@router.delete(
    "/studies/{study_uid}/pin",
    dependencies=[*ADMIN, audited(AuditAction.STUDY_UNPIN)],
    response_model=Pin,
    responses=not_found_answer("No such study"),
)
def unpin_study(study_uid: StudyUid, session: WriterSessionDep) -> Pin:
    """Let retention evict the study again, in its turn."""
    return _pinned(session, study_uid, False)


def _pinned(session: Session, study_uid: str, pinned: bool) -> Pin:
    if not set_pinned(session, study_uid, pinned):
        raise not_found("study", study_uid)
    return Pin(study_uid=study_uid, pinned=pinned)

"""The route of the audit trail: who read or changed what, newest first (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import AfterValidator

from services.api.dependencies import ADMIN, SessionDep
from services.api.parameters import ISO_TIME_PATTERN, optional_utc_time
from services.api.schemas import UID_PATTERN, AuditEntry, AuditPage
from shared.audit_trail import AuditFilters, AuditTrail, read_events
from shared.catalog.states import AuditAction

router = APIRouter(tags=["audit"])
_TIME_HELP = "ISO 8601 date or time (2024-05-01T08:00:00Z); naive times are UTC"


def _time(description: str) -> object:
    return Query(pattern=ISO_TIME_PATTERN, description=f"{description}: {_TIME_HELP}")


@router.get("/audit", dependencies=ADMIN, response_model=AuditPage)
def get_audit(
    request: Request,
    session: SessionDep,
    key_name: Annotated[
        str | None, Query(min_length=1, max_length=128, description="A key's name")
    ] = None,
    action: Annotated[AuditAction | None, Query()] = None,
    study_uid: Annotated[str | None, Query(pattern=UID_PATTERN)] = None,
    since: Annotated[str | None, _time("At or after"), AfterValidator(optional_utc_time)] = None,
    until: Annotated[str | None, _time("Before"), AfterValidator(optional_utc_time)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="The 'next' of the page before")
    ] = None,
) -> AuditPage:
    """What each key read or changed, newest first: listings, studies, series, previews,
    downloads, retrievals, pins, repairs and PACS checks."""
    trail: AuditTrail = request.app.state.audit_trail
    trail.flush()  # this process's latest answers too
    filters = AuditFilters(
        key_name=key_name,
        action=action,
        study_uid=study_uid,
        since=since,  # type: ignore[arg-type]  # a datetime once validated
        until=until,  # type: ignore[arg-type]
    )
    rows, following = read_events(session, filters, limit, before)
    return AuditPage(
        items=[AuditEntry.model_validate(row, from_attributes=True) for row in rows], next=following
    )

"""Routes of the reconciliation of the scanners with the PACS: what the PACS lacks, and
the forward of a rescued study to the PACS (see `services.api.reconciliation`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator

from services.api.audit import audited
from services.api.dependencies import (
    ADMIN,
    READ,
    CallerDep,
    SessionDep,
    SettingsDep,
    WriterSessionsDep,
    not_found_answer,
)
from services.api.parameters import ISO_DAY_PATTERN, optional_day
from services.api.reconciliation import Forwarded, ReconciliationReport, forward, report
from services.api.schemas import Problem
from shared.catalog.states import AuditAction, DifferenceState
from shared.reconciliation_report import Filters, differences, latest_runs

router = APIRouter(tags=["reconciliation"])
DifferenceId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A difference's id")]


@router.get(
    "/reconciliation",
    dependencies=[*READ, audited(AuditAction.RECONCILIATION_LIST)],
    response_model=ReconciliationReport,
)
def list_differences(
    caller: CallerDep,
    session: SessionDep,
    scanner: Annotated[str | None, Query(max_length=64)] = None,
    state: Annotated[DifferenceState | None, Query()] = None,
    deadline_before: Annotated[
        str | None,
        Query(pattern=ISO_DAY_PATTERN, description="Only what the scanner deletes by this day"),
        AfterValidator(optional_day),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> ReconciliationReport:
    """What the PACS lacks of the scanners' studies, the nearest deadline first, and each
    scanner's latest check (a failed check says why). A key of some labs sees its labs'
    rows only."""
    deadline = deadline_before  # a date once validated
    filters = Filters(scanner, state, deadline, caller.labs, limit)  # type: ignore[arg-type]
    return report(latest_runs(session, scanner), differences(session, filters))


@router.post(
    "/reconciliation/{difference_id}/forward",
    dependencies=[*ADMIN, audited(AuditAction.RECONCILIATION_FORWARD)],
    response_model=Forwarded,
    responses={
        **not_found_answer("No such difference"),
        409: {
            "model": Problem,
            "description": "dcmdb does not hold all of it, or no PACS is configured",
        },
        502: {"model": Problem, "description": "The PACS could not be reached"},
    },
)
async def forward_to_pacs(
    settings: SettingsDep, sessions: WriterSessionsDep, difference_id: DifferenceId
) -> Forwarded:
    """Send a rescued study (or the series the PACS lacks) to the PACS by C-STORE, so that
    the clinical archive is whole again. Never done without this request."""
    return await forward(settings, sessions, difference_id)

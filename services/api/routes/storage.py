"""Routes of disk space and retention: usage, free space and the next eviction (a dry run,
see `services.api.storage`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.api.dependencies import READ, CallerDep, SessionDep, SettingsDep
from services.api.schemas import Storage
from services.api.storage import storage_report

router = APIRouter(tags=["storage"])


@router.get("/storage", dependencies=READ, response_model=Storage)
def get_storage(
    caller: CallerDep,
    settings: SettingsDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=0, le=1000, description="Studies of the dry run listed")] = 100,
) -> Storage:
    """Disk usage, free space, the retention thresholds, and what the next eviction
    would remove (a dry run). A lab's key sees its own labs' usage and evictions."""
    return storage_report(session, settings, limit, caller.labs)

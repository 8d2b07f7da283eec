"""Routes of series: one series, and a preview image of it."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from services.api.audit import audited
from services.api.dependencies import (
    READ,
    CallerDep,
    SeriesUid,
    SessionDep,
    SettingsDep,
    archive_file,
    not_found,
    not_found_answer,
)
from services.api.previews import PreviewUnavailable, render_preview
from services.api.schemas import SeriesSummary
from services.api.studies import find_series, instance_paths, series_summary
from shared.catalog.states import AuditAction

router = APIRouter(tags=["series"])


@router.get(
    "/series/{series_uid}",
    dependencies=[*READ, audited(AuditAction.SERIES_READ)],
    response_model=SeriesSummary,
    responses=not_found_answer("No such study or series"),
)
def get_series(caller: CallerDep, series_uid: SeriesUid, session: SessionDep) -> SeriesSummary:
    found = find_series(session, series_uid, caller.labs)
    if found is None:
        raise not_found("series", series_uid)
    return series_summary(*found)


@router.get(
    "/series/{series_uid}/preview.png",
    dependencies=[*READ, audited(AuditAction.SERIES_PREVIEW)],
    responses={
        **not_found_answer("No such study or series"),
        200: {"content": {"image/png": {}}},
    },
    response_class=Response,
)
def get_series_preview(
    caller: CallerDep, settings: SettingsDep, series_uid: SeriesUid, session: SessionDep
) -> Response:
    found = find_series(session, series_uid, caller.labs)
    if found is None:
        raise not_found("series", series_uid)
    files = [archive_file(settings, p) for p in instance_paths(session, [found[0].id])]
    session.close()  # rendering reads files only
    try:
        png = render_preview(files)
    except PreviewUnavailable as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no preview: {exc}") from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

"""The REST API: routes, errors and the objects every request shares.

`create_app` builds the FastAPI application from settings; `services.api.main` serves it
with uvicorn. Routes stay thin: queries live in `studies`, parsing in `parameters`, files
in `previews` and `archives`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import aiormq
from fastapi import FastAPI, HTTPException, Query, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api import metrics, retrievals, storage
from services.api.access import OPEN, READ, Keys, SessionDep
from services.api.archives import Entry, zip_stream
from services.api.parameters import (
    ISO_TIME_PATTERN,
    Cursor,
    DateRange,
    date_range,
    invalid,
    like_pattern,
    utc_time,
)
from services.api.previews import PreviewUnavailable, render_preview
from services.api.schemas import (
    Physician,
    Problem,
    SeriesSummary,
    StudyDetail,
    StudyPage,
)
from services.api.settings import ApiSettings
from services.api.studies import (
    PhysicianDirectory,
    StudyFilters,
    find_series,
    instance_paths,
    list_studies,
    physicians,
    series_summary,
    study_detail,
)
from shared.catalog.database import create_catalog_engine, open_catalog, session_factory
from shared.catalog.models import LISTED, Series, Study
from shared.monitoring import catalog_status
from shared.naming import resolve_under

log = logging.getLogger("dcmdb.api")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No API key, or an unknown one"},
    403: {"model": Problem, "description": "The API key lacks the scope"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such study or series"}
}
_READY_TIMEOUT = 3.0


def create_app(settings: ApiSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, sessions = open_catalog(settings.catalog_url)
        app.state.engine, app.state.sessions = engine, sessions
        # The few routes that write (retrievals, pins) use sessions of their own: on
        # SQLite they take the write lock as they begin, so that a read turning into a
        # write cannot fail as "database is locked" while another service commits.
        writer = create_catalog_engine(settings.catalog_url, writer=True)
        app.state.writer_sessions = session_factory(writer)
        app.state.physicians = PhysicianDirectory(sessions)
        yield
        writer.dispose()
        engine.dispose()

    app = FastAPI(
        title="dcmdb",
        summary="Find, preview and download the studies dcmdb received, by lab.",
        version="1",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.settings = settings
    app.state.keys = Keys(settings.keys)
    app.add_middleware(metrics.RequestMetrics)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    _routes(app)
    app.include_router(retrievals.router)
    app.include_router(storage.router)
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    """As FastAPI answers, but a 405's Allow lists the methods of every route of the path
    (Starlette lists only those of the first route that matches)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
        return await http_exception_handler(request, exc)
    allowed = sorted(
        method
        for route in request.app.routes
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
        for method in route.methods or ()
    )
    return JSONResponse(
        {"detail": exc.detail}, exc.status_code, headers={"Allow": ", ".join(allowed)}
    )


def _archive_file(request: Request, relative: str) -> Path:
    """A catalog path resolved under the archive root; never anything outside it."""
    settings: ApiSettings = request.app.state.settings
    try:
        return resolve_under(settings.archive_root, *relative.split("/"))
    except ValueError:
        log.error("a catalog path points outside the archive; refusing it")
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the file is not in the archive") from None


def _not_found(what: str, uid: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no {what} with UID {uid!r} in the catalog")


def _routes(app: FastAPI) -> None:
    @app.get("/studies", dependencies=READ, response_model=StudyPage, tags=["studies"])
    def get_studies(
        request: Request,
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
            AfterValidator(_optional_time),
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
            physician_folders=(
                request.app.state.physicians.folders_for(physician) if physician else None
            ),
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

    @app.get(
        "/studies/{study_uid}",
        dependencies=READ,
        response_model=StudyDetail,
        responses=_NOT_FOUND,
        tags=["studies"],
    )
    def get_study(study_uid: str, session: SessionDep) -> StudyDetail:
        detail = study_detail(session, study_uid)
        if detail is None:
            raise _not_found("study", study_uid)
        return detail

    @app.get(
        "/studies/{study_uid}/archive",
        dependencies=READ,
        responses={**_NOT_FOUND, 200: {"content": {"application/zip": {}}}},
        response_class=StreamingResponse,
        tags=["downloads"],
    )
    def get_study_archive(
        request: Request,
        study_uid: str,
        session: SessionDep,
        format: Annotated[Literal["dicom", "nifti", "all"], Query()] = "dicom",  # noqa: A002
    ) -> StreamingResponse:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid, LISTED))
        if study is None:
            raise _not_found("study", study_uid)
        series = session.query(Series).filter_by(study_pk=study.id).all()
        relative: list[str] = []
        if format in ("dicom", "all"):
            relative += instance_paths(session, [s.id for s in series])
        if format in ("nifti", "all"):
            for one in series:
                for output in one.outputs:
                    relative += output.paths
        prefix = f"{study.physician_folder}/"
        entries = [
            Entry(path.removeprefix(prefix), _archive_file(request, path))
            for path in sorted(set(relative))
        ]
        return _zip_response(entries, study.folder)

    @app.get(
        "/series/{series_uid}",
        dependencies=READ,
        response_model=SeriesSummary,
        responses=_NOT_FOUND,
        tags=["series"],
    )
    def get_series(series_uid: str, session: SessionDep) -> SeriesSummary:
        found = find_series(session, series_uid)
        if found is None:
            raise _not_found("series", series_uid)
        return series_summary(*found)

    @app.get(
        "/series/{series_uid}/preview.png",
        dependencies=READ,
        responses={**_NOT_FOUND, 200: {"content": {"image/png": {}}}},
        response_class=Response,
        tags=["series"],
    )
    def get_series_preview(request: Request, series_uid: str, session: SessionDep) -> Response:
        found = find_series(session, series_uid)
        if found is None:
            raise _not_found("series", series_uid)
        files = [_archive_file(request, p) for p in instance_paths(session, [found[0].id])]
        session.close()  # rendering reads files only
        try:
            png = render_preview(files)
        except PreviewUnavailable as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no preview: {exc}") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @app.get(
        "/series/{series_uid}/nifti",
        dependencies=READ,
        responses={
            **_NOT_FOUND,
            200: {"content": {"application/gzip": {}, "application/zip": {}}},
        },
        response_class=Response,
        tags=["downloads"],
    )
    def get_series_nifti(
        request: Request,
        series_uid: str,
        session: SessionDep,
        sidecar: Annotated[
            bool, Query(description="Also the JSON sidecar(s); the answer is then a ZIP")
        ] = False,
    ) -> Response:
        found = find_series(session, series_uid)
        if found is None:
            raise _not_found("series", series_uid)
        series, study = found
        if not series.outputs:
            why = f" ({series.conversion_reason})" if series.conversion_reason else ""
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"series {series_uid!r} has no NIfTI: conversion {series.conversion}{why}",
            )
        outputs = sorted(series.outputs, key=lambda o: o.path)
        gradients = [p for o in outputs for p in o.gradient_paths]  # never without them
        if len(outputs) == 1 and not sidecar and not gradients:
            path = _archive_file(request, outputs[0].path)
            if not path.is_file():
                log.error("a NIfTI file the catalog lists is missing from the archive")
                raise HTTPException(status.HTTP_404_NOT_FOUND, "the NIfTI file is missing")
            return FileResponse(path, media_type="application/gzip", filename=path.name)
        prefix = f"{study.relative_folder}/"
        relative = (
            [o.path for o in outputs]
            + gradients
            + ([o.sidecar_path for o in outputs] if sidecar else [])
        )
        entries = [Entry(p.removeprefix(prefix), _archive_file(request, p)) for p in relative]
        return _zip_response(entries, f"{study.folder}_{series.folder}_nifti")

    @app.get("/physicians", dependencies=READ, response_model=list[Physician], tags=["studies"])
    def get_physicians(session: SessionDep) -> list[Physician]:
        return physicians(session)

    @app.get("/healthz", dependencies=OPEN, tags=["operations"], response_model=dict[str, str])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        dependencies=OPEN,
        tags=["operations"],
        response_model=dict[str, str],
        responses={503: {"model": dict[str, str], "description": "Catalog or broker away"}},
    )
    async def readyz(request: Request) -> Response:
        """The catalog and the broker are reachable."""
        checks = {"catalog": await _catalog_check(request), "broker": await _broker_check(request)}
        ready = all(value == "ok" for value in checks.values())
        return _json(checks, status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE)

    @app.get("/metrics", dependencies=OPEN, tags=["operations"], response_class=Response)
    def get_metrics() -> Response:
        """Prometheus metrics of this process."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


def _optional_date_range(value: str | None) -> DateRange | None:
    return None if value is None else date_range(value)


def _optional_time(value: str | None) -> dt.datetime | None:
    return None if value is None else utc_time(value)


def _zip_response(entries: list[Entry], name: str) -> StreamingResponse:
    return StreamingResponse(
        zip_stream(entries),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


def _json(content: dict[str, str], code: int) -> Response:
    return JSONResponse(content, status_code=code)


async def _catalog_check(request: Request) -> str:
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(catalog_status, request.app.state.engine), _READY_TIMEOUT
        )
    except TimeoutError:
        return "unreachable: TimeoutError"


async def _broker_check(request: Request) -> str:
    settings: ApiSettings = request.app.state.settings
    try:
        connection = await asyncio.wait_for(aiormq.connect(settings.broker_url), _READY_TIMEOUT)
        await connection.close()
    except Exception as exc:  # noqa: BLE001
        return f"unreachable: {type(exc).__name__}"
    return "ok"

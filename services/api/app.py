"""The REST API: the application, its routes joined, and the objects every request shares.

`create_app` builds the FastAPI application from settings; `services.api.main` serves it
with uvicorn. Routes live in `services.api.routes`, one module per resource, and stay
thin: what they share is in `dependencies`, queries in `studies`, parsing in
`parameters`, files in `previews` and `archives`. The web page for people
(`services.api.web`) is joined in too, outside the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pydicom.config
from fastapi import APIRouter, FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api import metrics
from services.api.audit import AuditMiddleware
from services.api.dicomweb import router as dicomweb
from services.api.dicomweb.landing import Landing
from services.api.routes import (
    audit,
    bids,
    downloads,
    operations,
    reconciliation,
    retrievals,
    series,
    storage,
    studies,
    webhooks,
)
from services.api.schemas import Problem
from services.api.settings import ApiSettings, is_loopback
from services.api.studies import PhysicianDirectory
from services.api.web import docs, site
from shared.audit_trail import AuditTrail
from shared.catalog.database import create_catalog_engine, open_catalog, session_factory
from shared.keys import KeyRing
from shared.monitoring import Dependency, broker_reachable, catalog_status

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No API key, or an unknown one"},
    403: {"model": Problem, "description": "The API key lacks the scope"},
}
# In the order of the OpenAPI document.
_ROUTERS: tuple[APIRouter, ...] = (
    studies.router,
    downloads.router,
    bids.router,
    series.router,
    operations.router,
    retrievals.router,
    storage.router,
    audit.router,
    webhooks.router,
    reconciliation.router,
    *dicomweb.ROUTERS,
)


def create_app(settings: ApiSettings) -> FastAPI:
    # The API serves what was received as it is: pydicom's checks of values would refuse
    # to rewrite an odd one (DICOMweb's transcoding) or put it, a patient's ID perhaps, in
    # a warning of the log.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    # What /readyz reports, in this order; the catalog is watched once it is open.
    catalog, broker = Dependency("catalog"), Dependency("broker")
    broker.watch(lambda: broker_reachable(settings.broker_url))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, sessions = open_catalog(settings.catalog_url)
        app.state.sessions = sessions
        catalog.watch(lambda: catalog_status(engine))
        # The few routes that write (retrievals, pins) use sessions of their own: on
        # SQLite they take the write lock as they begin, so that a read turning into a
        # write cannot fail as "database is locked" while another service commits.
        writer = create_catalog_engine(settings.catalog_url, writer=True)
        app.state.writer_sessions = session_factory(writer)
        app.state.physicians = PhysicianDirectory(sessions)
        trail = AuditTrail(app.state.writer_sessions, settings.audit_days)
        app.state.audit_trail = trail.start()
        app.state.landing = Landing(settings, sessions)
        await app.state.landing.start()
        yield
        await app.state.landing.stop()  # announces what waits, for a while
        trail.close()  # writes what it holds
        writer.dispose()
        engine.dispose()

    # Swagger UI's and ReDoc's assets served by dcmdb itself, not a CDN, for /docs and
    # /redoc on a network without internet (their pages: `services.api.web.docs`).
    app = FastAPIOffline(
        docs_url=None,
        redoc_url=None,
        static_url=docs.STATIC_URL,
        title="dcmdb",
        summary="Find, preview and download the studies dcmdb received, by lab.",
        version="1",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.settings = settings
    app.state.keys = KeyRing(settings.keys_path, settings.keys)
    app.state.open_without_keys = is_loopback(settings.api_host)
    app.state.readiness = [catalog, broker]
    app.add_middleware(metrics.RequestMetrics)
    app.add_middleware(AuditMiddleware)
    for router in _ROUTERS:
        app.include_router(router)
    # The web page at /, for people; an HTTP error on its paths is a page, elsewhere
    # `_http_error` answers it.
    site.install(app, settings, _http_error)
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    """As FastAPI answers, but a 405's Allow lists the methods of every route of the path
    (Starlette lists only those of the first route that matches)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
        return await http_exception_handler(request, exc)
    # The routers' own routes: an application lists an included router as one entry.
    allowed = sorted(
        method
        for router in _ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path)
        for method in route.methods or ()
    )
    return JSONResponse(
        {"detail": exc.detail}, exc.status_code, headers={"Allow": ", ".join(allowed)}
    )

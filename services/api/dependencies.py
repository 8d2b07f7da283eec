"""What the routes share, as FastAPI dependencies: who may call, the settings, catalog
sessions, the UIDs in paths, and the answers for what is not there.

`Annotated` aliases keep a route's signature to what the route is about; the objects they
hand out are built once per application by `services.api.app.create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status
from sqlalchemy.orm import Session, sessionmaker

from services.api.access import CallerDep as CallerDep  # routes take it from here
from services.api.access import admin, reader
from services.api.parameters import known_parameters_only
from services.api.schemas import UID_PATTERN, Problem
from services.api.settings import ApiSettings
from services.api.studies import PhysicianDirectory
from shared.monitoring import Dependency
from shared.naming import resolve_under

log = logging.getLogger("dcmdb.api")

# Route dependencies: a key with this scope, or none (parameters still checked).
READ = [Depends(reader)]
ADMIN = [Depends(admin)]
OPEN = [Depends(known_parameters_only)]


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[ApiSettings, Depends(_settings)]


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
"""A catalog session for the request, closed when it is answered."""


def _writer_session(request: Request) -> Iterator[Session]:
    with request.app.state.writer_sessions() as session:
        yield session


WriterSessionDep = Annotated[Session, Depends(_writer_session)]
"""The same, for a route that writes to the catalog."""


def _sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


def _writer_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.writer_sessions  # type: ignore[no-any-return]


# For a route that opens its sessions itself, around a slow call (a PACS asked) that
# should hold no catalog connection.
SessionsDep = Annotated[sessionmaker[Session], Depends(_sessions)]
WriterSessionsDep = Annotated[sessionmaker[Session], Depends(_writer_sessions)]


def _physicians(request: Request) -> PhysicianDirectory:
    return request.app.state.physicians  # type: ignore[no-any-return]


PhysiciansDep = Annotated[PhysicianDirectory, Depends(_physicians)]


def _readiness(request: Request) -> list[Dependency]:
    return request.app.state.readiness  # type: ignore[no-any-return]


ReadinessDep = Annotated[list[Dependency], Depends(_readiness)]
"""What the API needs to answer (the catalog, the broker), as `/readyz` reports them."""

StudyUid = Annotated[str, Path()]
SeriesUid = Annotated[str, Path()]
# Goes to the PACS as a C-FIND key: see UID_PATTERN.
PacsStudyUid = Annotated[str, Path(pattern=UID_PATTERN, description="A study UID")]
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A job id")]


def not_found(what: str, uid: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no {what} with UID {uid!r} in the catalog")


def not_found_answer(description: str) -> dict[int | str, dict[str, Any]]:
    """The 404 of a route, as the OpenAPI document lists it."""
    return {404: {"model": Problem, "description": description}}


def archive_file(settings: ApiSettings, relative: str) -> FilePath:
    """A catalog path resolved under the archive root; never anything outside it."""
    try:
        return resolve_under(settings.archive_root, *relative.split("/"))
    except ValueError:
        log.error("a catalog path points outside the archive; refusing it")
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the file is not in the archive") from None

"""What the DICOMweb routes share: the service's address, the UIDs of their paths, the query
parameters each takes, and the answers the OpenAPI document lists for them.

DICOMweb answers a request it cannot act on with 400 and the reason (PS3.18 8.6), where the
rest of the API uses FastAPI's 422: a client of either gets a 4xx naming what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from services.api.audit import audited
from services.api.dependencies import CallerDep, SessionDep, SettingsDep
from services.api.dicomweb.stored import StoredInstance, stored_instances
from services.api.schemas import Problem
from shared.catalog.states import AuditAction

PREFIX = "/dicomweb"


def dicomweb_router() -> APIRouter:
    """A router of DICOMweb resources, at /dicomweb (joined by `services.api.dicomweb.router`)."""
    return APIRouter(prefix=PREFIX, tags=["dicomweb"])


StudyUid = Annotated[str, Path(description="Study Instance UID")]
SeriesUid = Annotated[str, Path(description="Series Instance UID")]
InstanceUid = Annotated[str, Path(description="SOP Instance UID")]
FrameList = Annotated[
    str,
    Path(pattern=r"^[0-9]{1,9}(,[0-9]{1,9})*$", description="Frame numbers from 1: 1,2,3"),
]


_PROXIED = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def service_base(request: Request) -> str:
    """The DICOMweb service's address as the client reached it (RetrieveURL, BulkDataURI).

    dicomweb-client sends a Host header without the port; a request that came straight
    (through no proxy, which would say so) reached the port the API listens on, so that is
    the port of the address."""
    base = request.base_url
    server = request.scope.get("server")
    direct = not any(name in request.headers for name in _PROXIED)
    if direct and base.port is None and server and server[1] != _DEFAULT_PORTS.get(base.scheme):
        base = base.replace(port=server[1])
    return str(base).rstrip("/") + PREFIX


def bad_request(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, reason)


def only_parameters(request: Request, allowed: Collection[str] = ()) -> dict[str, str]:
    """The query parameters of `request`, each of `allowed` at most once; a 400 otherwise."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            takes = ", ".join(sorted(allowed)) or "no query parameters"
            raise bad_request(f"unknown parameter {name!r}; this resource takes {takes}")
        if name in found:
            raise bad_request(f"{name} is given more than once; give it once")
        found[name] = value
    return found


def answers(
    content_type: str, *, json_schema: dict[str, Any] | None = None
) -> dict[int | str, Any]:
    """The answers of a DICOMweb route, as the OpenAPI document lists them."""
    problem = {"model": Problem}
    return {
        200: {"content": {content_type: {"schema": json_schema} if json_schema else {}}},
        400: {**problem, "description": "The request cannot be acted on; the reason is given"},
        404: {**problem, "description": "No such study, series or instance"},
        406: {**problem, "description": "None of the accepted media types can be sent"},
    }


DICOM_JSON_LIST = {"type": "array", "items": {"type": "object"}}

STUDY = "/studies/{study_uid}"
SERIES = f"{STUDY}/series/{{series_uid}}"
INSTANCE = f"{SERIES}/instances/{{instance_uid}}"
# What a resource route does with the instances its path names (one: the path names one).
ResourceHandler = Callable[[Request, list[StoredInstance], bool], Response]


def add_resource_routes(
    router: APIRouter,
    view: str,
    handler: ResourceHandler,
    *,
    action: AuditAction,
    responses: dict[int | str, Any],
    what: str,
) -> None:
    """``GET`` routes of `view` (``""``, ``/metadata``, ...) of a study, a series and an
    instance: each finds the instances of its path for the caller's labs (a 404 naming the
    UID not found) and hands them to `handler`, with the catalog session closed."""

    def study(
        request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
        study_uid: StudyUid,
    ) -> Response:  # fmt: skip
        found = stored_instances(session, settings, caller.labs, study_uid)
        session.close()
        return handler(request, found, False)

    def series(
        request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
        study_uid: StudyUid, series_uid: SeriesUid,
    ) -> Response:  # fmt: skip
        found = stored_instances(session, settings, caller.labs, study_uid, series_uid)
        session.close()
        return handler(request, found, False)

    def instance(
        request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
        study_uid: StudyUid, series_uid: SeriesUid, instance_uid: InstanceUid,
    ) -> Response:  # fmt: skip
        labs = caller.labs
        found = stored_instances(session, settings, labs, study_uid, series_uid, instance_uid)
        session.close()
        return handler(request, found, True)

    for path, endpoint in ((STUDY, study), (SERIES, series), (INSTANCE, instance)):
        router.add_api_route(
            f"{path}{view}",
            endpoint,
            methods=["GET"],
            dependencies=[audited(action)],
            responses=responses,
            response_class=Response,
            name=f"{endpoint.__name__}{view.replace('/', '_')}",
            description=f"{what}, of the {endpoint.__name__}.",
        )

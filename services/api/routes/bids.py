"""Routes of the labs' BIDS datasets: a study's session as a ZIP, and a lab's naming rules.

Lab scoping is the study routes': another lab's study is not found, exactly as an unknown
one; another lab's rules are not found, exactly as an unknown lab's.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from services.api import bids
from services.api.archives import Entry, zip_stream
from services.api.audit import audited
from services.api.dependencies import (
    READ,
    CallerDep,
    PhysiciansDep,
    SessionDep,
    SettingsDep,
    StudyUid,
    not_found,
    not_found_answer,
)
from services.api.schemas import BidsRules, Problem
from services.api.studies import find_study
from shared.bids.dataset import place_of, session_members
from shared.bids.rules import Rules, RulesError
from shared.catalog.states import AuditAction
from shared.keys import Caller

log = logging.getLogger("dcmdb.api")

router = APIRouter(tags=["bids"])

Physician = Annotated[
    str,
    Query(
        min_length=1,
        max_length=256,
        description="The lab: its folder (SMITH_JOHN) or the physician's name as sent",
    ),
]


@router.get(
    "/studies/{study_uid}/bids",
    dependencies=[*READ, audited(AuditAction.STUDY_BIDS)],
    responses={
        **not_found_answer("No such study, or no BIDS session of it yet"),
        200: {"content": {"application/zip": {}}},
        304: {"description": "The session is as the ETag of If-None-Match says"},
    },
    response_class=StreamingResponse,
)
def get_study_bids(
    caller: CallerDep,
    settings: SettingsDep,
    study_uid: StudyUid,
    session: SessionDep,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The study's BIDS session as a small dataset of its own: dataset_description.json,
    participants.tsv with its subject's row, and the session's folder."""
    if find_study(session, study_uid, caller.labs) is None:
        raise not_found("study", study_uid)
    place = place_of(session, settings.archive_root, settings.bids_dir, study_uid)
    if place is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"study {study_uid!r} has no BIDS session: no series of this study has a BIDS "
            f"name yet; see the study's leftovers{bids.leftovers_hint(session, study_uid)}",
        )
    members = session_members(place)
    etag = bids.session_etag(members)
    if bids.unchanged(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    name = f"{place.lab}_sub-{place.subject}_ses-{place.session}_bids.zip"
    return StreamingResponse(
        zip_stream(Entry(arcname, source) for arcname, source in members),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "ETag": etag},
    )


def _lab(caller: Caller, directory: PhysiciansDep, physician: str) -> str:
    """The one lab `physician` names among the caller's; another lab's is not found, as an
    unknown one is."""
    folders = {folder for folder in directory.folders_for(physician) if caller.sees(folder)}
    if len(folders) != 1:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no lab {physician!r} among this key's labs: GET /physicians lists them",
        )
    return folders.pop()


_RULES_ANSWERS: dict[int | str, dict[str, Any]] = {
    **not_found_answer("No such lab among the key's"),
    409: {"model": Problem, "description": "The stored rules file is not valid"},
}
# The most a rules file may weigh: a lab's descriptions are a few dozen.
MAX_RULES_BYTES = 1_000_000


@router.get(
    "/bids/rules",
    dependencies=READ,
    response_model=BidsRules,
    response_model_exclude_unset=True,
    responses=_RULES_ANSWERS,
)
def get_bids_rules(
    caller: CallerDep, settings: SettingsDep, directory: PhysiciansDep, physician: Physician
) -> Any:
    """The lab's BIDS naming rules; an empty list of descriptions when it has none."""
    lab = _lab(caller, directory, physician)
    try:
        rules = bids.read_rules(bids.rules_path(settings, lab))
        Rules.parse(rules)
    except ValueError as exc:  # RulesError too: an edit by hand gone wrong
        raise HTTPException(status.HTTP_409_CONFLICT, f"{exc}: PUT new rules") from None
    return rules


@router.put(
    "/bids/rules",
    dependencies=[*READ, audited(AuditAction.BIDS_RULES_CHANGE)],
    response_model=BidsRules,
    response_model_exclude_unset=True,
    responses={
        **_RULES_ANSWERS,
        413: {"model": Problem, "description": "The body is larger than a rules file may be"},
        503: {"model": Problem, "description": "Stored, but the converter was not told"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BidsRules"}}},
        }
    },
)
async def put_bids_rules(
    request: Request,
    caller: CallerDep,
    settings: SettingsDep,
    directory: PhysiciansDep,
    physician: Physician,
) -> Any:
    """Replace the lab's rules; the converter then names the lab's sessions again. Every
    mistake is a 422 whose message names the description and field (the body is read here,
    not by FastAPI, so that the rules' own checks word it)."""
    lab = await run_in_threadpool(_lab, caller, directory, physician)
    rules = _rules_of(await _body(request))
    await run_in_threadpool(bids.store_rules, settings, lab, rules)
    try:
        await bids.tell_converter(settings, lab)
    except Exception as exc:  # noqa: BLE001 - any failure of the broker is the same answer
        log.warning("a lab's BIDS rules changed; the converter was not told (%r)", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the rules are stored, but the converter could not be told (RabbitMQ did not "
            "answer): PUT them again once it does, or the lab's sessions keep their names",
        ) from None
    return rules


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_RULES_BYTES:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"a rules file has at most {MAX_RULES_BYTES} bytes",
            )
    return body


def _rules_of(body: bytes) -> Any:
    """The rules of a body, checked; a 422 in FastAPI's shape whose message says what is
    wrong, in the rules' own words."""
    try:
        rules = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refused(f"the body is not JSON in UTF-8: {exc}") from None
    try:
        Rules.parse(rules)
    except RulesError as exc:
        raise _refused(str(exc)) from None
    return rules


def _refused(message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body",), "msg": message, "input": None}]
    )

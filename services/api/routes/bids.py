"""Routes of the labs' BIDS datasets: a study's session as a ZIP, and a lab's naming rules.

Lab scoping is the study routes': another lab's study is not found, exactly as an unknown
one; another lab's rules are not found, exactly as an unknown lab's.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, Body, Header, HTTPException, Query, status
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
from services.api.schemas import Problem
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
    409: {"model": Problem, "description": "The stored rules file is not JSON"},
}


@router.get("/bids/rules", dependencies=READ, responses=_RULES_ANSWERS)
def get_bids_rules(
    caller: CallerDep, settings: SettingsDep, directory: PhysiciansDep, physician: Physician
) -> Any:
    """The lab's BIDS naming rules (dcm2bids-like criteria on sidecar fields); an empty
    list of descriptions when it has none."""
    lab = _lab(caller, directory, physician)
    try:
        return bids.read_rules(bids.rules_path(settings, lab))
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{exc}: PUT new rules") from None


@router.put(
    "/bids/rules",
    dependencies=[*READ, audited(AuditAction.BIDS_RULES_CHANGE)],
    responses={
        **_RULES_ANSWERS,
        422: {"model": Problem, "description": "The rules are not valid; the detail says why"},
        503: {"model": Problem, "description": "Stored, but the converter was not told"},
    },
)
def put_bids_rules(
    caller: CallerDep,
    settings: SettingsDep,
    directory: PhysiciansDep,
    physician: Physician,
    rules: Annotated[Any, Body(description="The rules, as GET answers them")],
) -> Any:
    """Replace the lab's rules; the converter then names the lab's sessions again."""
    lab = _lab(caller, directory, physician)
    if isinstance(rules, bytes):  # a body that was not sent as JSON
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "send the rules as JSON (Content-Type: application/json)",
        )
    try:
        Rules.parse(rules)
    except RulesError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    bids.store_rules(bids.rules_path(settings, lab), rules)
    try:
        anyio.from_thread.run(bids.tell_converter, settings, lab)
    except Exception as exc:  # noqa: BLE001 - any failure of the broker is the same answer
        log.warning("a lab's BIDS rules changed; the converter was not told (%r)", exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the rules are stored, but the converter could not be told (RabbitMQ did not "
            "answer): PUT them again once it does, or the lab's sessions keep their names",
        ) from None
    return rules

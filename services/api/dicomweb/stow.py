"""STOW-RS, the DICOMweb Store Instances transaction (PS3.18 10.5): ``POST /dicomweb/studies``
and ``POST /dicomweb/studies/{study_uid}`` with a multipart/related body of
application/dicom parts, each one instance (PS3.10).

Each instance takes the receiver's path (`landing`): durable in an incoming folder before
the answer, announced, filed by the sorter and converted. An admin key may store any
instance; a lab's key only instances that file into one of its labs; a read key of every
lab none. The answer
(application/dicom+json, PS3.18 Annex I) lists what was stored, with its WADO-RS URL, and
what was not, with its Failure Reason: 200 when all were stored, 202 when some were (or
one was kept aside with its Warning Reason, a copy of a filed instance that does not replace
it: `landing`), 409 when none. A body that is not multipart/related of application/dicom is
a 415, one that does not parse a 400, one longer than DCMDB_STOW_MAX_REQUEST a 413.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from fastapi.responses import Response
from pydicom import Dataset
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from services.api.audit import audit_note, audited
from services.api.dependencies import READ, CallerDep, SettingsDep
from services.api.dicomweb.landing import DICOM, Landing, Outcome, StowRequest
from services.api.dicomweb.multipart import BodyTooLarge, MalformedBody, body_parts
from services.api.schemas import UID_PATTERN, Problem
from shared.catalog.states import AuditAction
from shared.incoming import FolderTaken

log = logging.getLogger("dcmdb.api.stow")

DICOM_JSON = "application/dicom+json"
_ANSWER = {DICOM_JSON: {"schema": {"type": "object"}}}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance stored", "content": _ANSWER},
    202: {
        "description": "Some instances stored, the others listed with their Failure Reason; "
        "or one kept aside, not filed, with its Warning Reason",
        "content": _ANSWER,
    },  # fmt: skip
    400: {"model": Problem, "description": "The body is not multipart/related, or holds no part"},
    409: {
        "description": "No instance stored: each listed with its Failure Reason",
        "content": _ANSWER,
    },  # fmt: skip
    413: {"model": Problem, "description": "The body is longer than DCMDB_STOW_MAX_REQUEST"},
    415: {"model": Problem, "description": 'Not multipart/related; type="application/dicom"'},
    503: {"model": Problem, "description": "Another process holds the API's STOW-RS folder"},
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            'multipart/related; type="application/dicom"': {
                "schema": {"type": "string", "format": "binary"}
            }
        },
    }
}
StowStudyUid = Annotated[str, Path(pattern=UID_PATTERN, description="A study UID")]

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])


def _storer(caller: CallerDep) -> None:
    """Admin keys store anything, a lab's key what files into its labs (`landing`); a read
    key of every lab (DCMDB_API_KEYS ``KEY:read``, say) only reads."""
    if not caller.is_admin and caller.labs is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "storing needs an admin key, or a lab's key for its labs"
        )


_ROUTE: dict[str, Any] = {
    "dependencies": [*READ, Depends(_storer), audited(AuditAction.STUDY_STORE)],
    "responses": _RESPONSES,
    "openapi_extra": _BODY,
    "response_class": Response,
}


@router.post("/studies", **_ROUTE)
async def store_instances(request: Request, caller: CallerDep, settings: SettingsDep) -> Response:
    """Store instances of any studies (STOW-RS)."""
    return await _store(request, StowRequest(caller, None, _peer(request)), settings)


@router.post("/studies/{study_uid}", **_ROUTE)
async def store_study_instances(
    request: Request, caller: CallerDep, settings: SettingsDep, study_uid: StowStudyUid
) -> Response:
    """Store instances of one study (STOW-RS); an instance of another study is refused."""
    return await _store(request, StowRequest(caller, study_uid, _peer(request)), settings)


async def _store(request: Request, stow: StowRequest, settings: SettingsDep) -> Response:
    boundary = _boundary(request.headers.get("content-type", ""))
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > settings.stow_max_request:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, _too_large(settings))
    landing: Landing = request.app.state.landing
    outcomes: list[Outcome] = []
    problem: tuple[int, str] | None = None
    try:
        parts = body_parts(
            request,
            boundary,
            max_body=settings.stow_max_request,
            max_part=settings.stow_max_instance,
        )
        async for part in parts:
            outcomes.append(await landing.take(part, stow))
    except MalformedBody as exc:
        problem = status.HTTP_400_BAD_REQUEST, str(exc)
    except BodyTooLarge:
        problem = status.HTTP_413_CONTENT_TOO_LARGE, _too_large(settings)
    except ClientDisconnect:
        problem = status.HTTP_400_BAD_REQUEST, "the body was cut short"
    except FolderTaken as exc:
        problem = status.HTTP_503_SERVICE_UNAVAILABLE, f"cannot take instances: {exc}"
    stored = [outcome for outcome in outcomes if outcome.failure is None]
    filed = [outcome for outcome in stored if outcome.warning is None]
    audit_note(changed=sorted({outcome.study_uid for outcome in filed}))
    if problem is None and not outcomes:
        problem = status.HTTP_400_BAD_REQUEST, "the body holds no part"
    if problem is not None:
        code, detail = problem
        if stored:  # durable and announced: sending the request again files them once
            detail += f"; the {len(stored)} instance(s) before it were stored"
        raise HTTPException(code, detail)
    log.info("STOW-RS by key %s: %d stored, %d refused", stow.caller.name, len(stored),
             len(outcomes) - len(stored))  # fmt: skip
    return _answer(str(request.base_url), outcomes, stow.study_uid)


def _boundary(content_type: str) -> bytes:
    media_type, parameters = parse_options_header(content_type)
    wanted = parameters.get(b"type", DICOM.encode()).strip().lower()
    if media_type != b"multipart/related" or wanted != DICOM.encode():
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            'STOW-RS takes multipart/related; type="application/dicom" (instances as PS3.10 files)',
        )
    boundary = parameters.get(b"boundary", b"")
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the Content-Type names no boundary")
    return boundary


def _too_large(settings: SettingsDep) -> str:
    return f"the body is longer than DCMDB_STOW_MAX_REQUEST ({settings.stow_max_request} bytes)"


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""


def _answer(base_url: str, outcomes: list[Outcome], study_uid: str | None) -> Response:
    """The Store Instances Response Module (PS3.18 Table I.2-1) in DICOM JSON."""
    stored = [outcome for outcome in outcomes if outcome.failure is None]
    failed = [outcome for outcome in outcomes if outcome.failure is not None]
    answer = Dataset()
    studies = {study_uid} if study_uid else {outcome.study_uid for outcome in stored}
    if len(studies) == 1:
        answer.RetrieveURL = f"{base_url}dicomweb/studies/{_segment(studies.pop())}"
    if failed:
        answer.FailedSOPSequence = [_reference(outcome) for outcome in failed]
    answer.ReferencedSOPSequence = [_reference(outcome, base_url) for outcome in stored]
    warned = any(outcome.warning is not None for outcome in stored)
    code = status.HTTP_200_OK if not failed and not warned else status.HTTP_202_ACCEPTED
    if not stored:
        code = status.HTTP_409_CONFLICT
    return Response(json.dumps(answer.to_json_dict()), code, media_type=DICOM_JSON)


def _reference(outcome: Outcome, base_url: str | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    if outcome.failure is not None:
        item.FailureReason = outcome.failure
    elif base_url is not None:
        if outcome.warning is not None:  # the filed copy is the one the URL retrieves
            item.WarningReason = outcome.warning
        item.RetrieveURL = (
            f"{base_url}dicomweb/studies/{_segment(outcome.study_uid)}"
            f"/series/{_segment(outcome.series_uid)}"
            f"/instances/{_segment(outcome.sop_instance_uid)}"
        )
    return item


def _segment(uid: str) -> str:
    return quote(uid, safe="")

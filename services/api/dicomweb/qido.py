"""QIDO-RS (PS3.18 10.6): searches for studies, series and instances, answered in DICOM JSON.

The search is parsed by `search`, run on the catalog by `matching`; a page holds `limit`
results from `offset` (at most `search.MAX_RESULTS`: a page cut there says so in a Warning
header, as PS3.18 8.3.4.4 has it). No match is ``[]``. A search within a study or series
that is not there for the caller (another lab's) answers 404 as an unknown UID does.
"""

from __future__ import annotations

import json

from fastapi import Request, Response

from services.api.audit import audited
from services.api.dependencies import CallerDep, SessionDep, SettingsDep
from services.api.dicomweb.matching import run_search
from services.api.dicomweb.media import DICOM_JSON, accepted, require_json
from services.api.dicomweb.resources import (
    DICOM_JSON_LIST,
    SeriesUid,
    StudyUid,
    answers,
    bad_request,
    dicomweb_router,
    service_base,
)
from services.api.dicomweb.search import BadSearch, Level, parse_search
from services.api.dicomweb.stored import require_visible
from shared.catalog.states import AuditAction

router = dicomweb_router()
_SEARCH = [audited(AuditAction.DICOMWEB_SEARCH)]
_JSON = answers(DICOM_JSON, json_schema=DICOM_JSON_LIST)
_CUT = (
    '299 dcmdb "The number of results exceeded the maximum supported by the server. '
    'Additional results can be requested."'
)


@router.get("/studies", dependencies=_SEARCH, responses=_JSON, response_class=Response)
def search_studies(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep
) -> Response:
    """Studies, by PatientName, PatientID, StudyDate, AccessionNumber, ModalitiesInStudy,
    StudyDescription, ReferringPhysicianName, StudyInstanceUID (keyword or tag)."""
    return _search(request, caller, settings, session, Level.STUDY)


@router.get("/series", dependencies=_SEARCH, responses=_JSON, response_class=Response)
def search_series(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep
) -> Response:
    """Series of any study, by the study's attributes and the series'."""
    return _search(request, caller, settings, session, Level.SERIES)


@router.get("/instances", dependencies=_SEARCH, responses=_JSON, response_class=Response)
def search_instances(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep
) -> Response:
    """Instances of any series, by the study's, series' and instance's attributes."""
    return _search(request, caller, settings, session, Level.INSTANCE)


@router.get(
    "/studies/{study_uid}/series", dependencies=_SEARCH, responses=_JSON, response_class=Response
)
def search_study_series(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
    study_uid: StudyUid,
) -> Response:  # fmt: skip
    """The study's series."""
    fixed = {"StudyInstanceUID": study_uid}
    return _search(request, caller, settings, session, Level.SERIES, Level.STUDY, fixed)


@router.get(
    "/studies/{study_uid}/series/{series_uid}/instances",
    dependencies=_SEARCH,
    responses=_JSON,
    response_class=Response,
)
def search_series_instances(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
    study_uid: StudyUid, series_uid: SeriesUid,
) -> Response:  # fmt: skip
    """The series' instances."""
    fixed = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid}
    return _search(request, caller, settings, session, Level.INSTANCE, Level.SERIES, fixed)


def _search(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
    level: Level, within: Level | None = None, fixed: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    require_json(accepted(request.headers.get("accept")))
    fixed = fixed or {}
    try:
        search = parse_search(level, within, request.query_params.multi_items(), fixed)
    except BadSearch as exc:
        raise bad_request(str(exc)) from None
    if fixed:
        require_visible(
            session, caller.labs, fixed["StudyInstanceUID"], fixed.get("SeriesInstanceUID")
        )
    results, more = run_search(session, settings, search, caller.labs, service_base(request))
    headers = {"Warning": _CUT} if more and search.cut_at_maximum else {}
    body = json.dumps(results, separators=(",", ":")).encode()
    return Response(body, media_type=DICOM_JSON, headers=headers)

"""Routes that download files: a study as a ZIP, a series' NIfTI (alone, or in a ZIP).

Every path comes from the catalog and is resolved under the archive root before it is
read; names in a ZIP are relative to the lab folder (a study) or the study (a series).
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse, Response, StreamingResponse

from services.api.archives import Entry, zip_stream
from services.api.audit import audited
from services.api.dependencies import (
    READ,
    CallerDep,
    SeriesUid,
    SessionDep,
    SettingsDep,
    StudyUid,
    archive_file,
    not_found,
    not_found_answer,
)
from services.api.studies import find_series, find_study, instance_paths
from shared.catalog.models import Series
from shared.catalog.states import AuditAction

log = logging.getLogger("dcmdb.api")

router = APIRouter(tags=["downloads"])


@router.get(
    "/studies/{study_uid}/archive",
    dependencies=[*READ, audited(AuditAction.STUDY_ARCHIVE)],
    responses={
        **not_found_answer("No such study or series"),
        200: {"content": {"application/zip": {}}},
    },
    response_class=StreamingResponse,
)
def get_study_archive(
    caller: CallerDep,
    settings: SettingsDep,
    study_uid: StudyUid,
    session: SessionDep,
    format: Annotated[Literal["dicom", "nifti", "all"], Query()] = "dicom",  # noqa: A002
) -> StreamingResponse:
    study = find_study(session, study_uid, caller.labs)
    if study is None:
        raise not_found("study", study_uid)
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
        Entry(path.removeprefix(prefix), archive_file(settings, path))
        for path in sorted(set(relative))
    ]
    return _zip_response(entries, study.folder)


@router.get(
    "/series/{series_uid}/nifti",
    dependencies=[*READ, audited(AuditAction.SERIES_NIFTI)],
    responses={
        **not_found_answer("No such study or series"),
        200: {"content": {"application/gzip": {}, "application/zip": {}}},
    },
    response_class=Response,
)
def get_series_nifti(
    caller: CallerDep,
    settings: SettingsDep,
    series_uid: SeriesUid,
    session: SessionDep,
    sidecar: Annotated[
        bool, Query(description="Also the JSON sidecar(s); the answer is then a ZIP")
    ] = False,
) -> Response:
    found = find_series(session, series_uid, caller.labs)
    if found is None:
        raise not_found("series", series_uid)
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
        path = archive_file(settings, outputs[0].path)
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
    entries = [Entry(p.removeprefix(prefix), archive_file(settings, p)) for p in relative]
    return _zip_response(entries, f"{study.folder}_{series.folder}_nifti")


def _zip_response(entries: list[Entry], name: str) -> StreamingResponse:
    return StreamingResponse(
        zip_stream(entries),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )

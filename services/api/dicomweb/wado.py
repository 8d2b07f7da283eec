"""WADO-RS (PS3.18 10.4): studies, series and instances as DICOM Part 10 files, their metadata
as DICOM JSON, frames and bulk data.

Instances are streamed as ``multipart/related; type="application/dicom"``, each file read in
chunks as its turn comes: a study is never held in memory. An instance sent in its stored
transfer syntax is the archived file, byte for byte; the syntax is chosen before the first
byte goes out (`media.instance_syntaxes`), so a 406 comes instead of a body cut short.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated, BinaryIO

from fastapi import HTTPException, Path, Request, Response, status
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from services.api.audit import audited
from services.api.dependencies import CallerDep, SessionDep, SettingsDep
from services.api.dicomweb.dicom_json import PIXEL_DATA, instance_metadata
from services.api.dicomweb.frames import FrameError, NoPixelData, PixelFrames, frame_numbers
from services.api.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    OCTET_STREAM,
    accepted,
    frame_choice,
    frame_part_type,
    instance_syntaxes,
    require_json,
    require_octet_stream,
)
from services.api.dicomweb.resources import (
    DICOM_JSON_LIST,
    INSTANCE,
    FrameList,
    InstanceUid,
    SeriesUid,
    StudyUid,
    add_resource_routes,
    answers,
    bad_request,
    dicomweb_router,
    only_parameters,
    service_base,
)
from services.api.dicomweb.sending import Part, multipart_response
from services.api.dicomweb.stored import StoredInstance, stored_instances
from services.api.dicomweb.transcoding import as_explicit_little_endian
from shared.catalog.states import AuditAction

log = logging.getLogger("dcmdb.api")

router = dicomweb_router()
CHUNK = 1 << 20
Tag = Annotated[str, Path(pattern="^[0-9A-Fa-f]{8}$", description="A top-level tag: 00291010")]
_BULK = [audited(AuditAction.DICOMWEB_BULKDATA)]
_MULTIPART = answers("multipart/related")
# What reading a file that is gone, or not what it should be, raises.
_UNREADABLE = (FileNotFoundError, InvalidDicomError, ValueError, EOFError)


def _instances(request: Request, instances: list[StoredInstance], _: bool) -> Response:
    only_parameters(request)
    ranges = accepted(request.headers.get("accept"))
    syntaxes = instance_syntaxes(ranges, [instance.transfer_syntax for instance in instances])
    return multipart_response(_instance_parts(instances, syntaxes), DICOM)


def _instance_parts(instances: list[StoredInstance], syntaxes: dict[str, str]) -> Iterator[Part]:
    for number, instance in enumerate(instances, start=1):
        syntax = syntaxes[instance.transfer_syntax]
        content_type = f"{DICOM}; transfer-syntax={syntax}"
        try:
            if syntax == instance.transfer_syntax:
                source = open(instance.path, "rb")  # noqa: SIM115 - closed by _chunks
                yield Part(content_type, _chunks(source))
            else:
                yield Part(content_type, [as_explicit_little_endian(instance.path)])
        except FileNotFoundError:  # evicted meanwhile
            log.warning("dicomweb: the file of instance %d is gone; left out", number)
        except _UNREADABLE as exc:  # cannot be rewritten
            log.warning(
                "dicomweb: instance %d cannot be transcoded (%s); left out",
                number,
                type(exc).__name__,
            )


def _chunks(source: BinaryIO) -> Iterator[bytes]:
    with source:
        while chunk := source.read(CHUNK):
            yield chunk


def _metadata(request: Request, instances: list[StoredInstance], _: bool) -> Response:
    only_parameters(request)
    require_json(accepted(request.headers.get("accept")))
    base = service_base(request)
    return StreamingResponse(_json_array(instances, base), media_type=DICOM_JSON)


add_resource_routes(
    router, "", _instances,
    action=AuditAction.DICOMWEB_RETRIEVE, responses=_MULTIPART,
    what='The instances as DICOM files (multipart/related; type="application/dicom")',
)  # fmt: skip
add_resource_routes(
    router, "/metadata", _metadata,
    action=AuditAction.DICOMWEB_METADATA,
    responses=answers(DICOM_JSON, json_schema=DICOM_JSON_LIST),
    what="The metadata of the instances (DICOM JSON, bulk data as BulkDataURI)",
)  # fmt: skip


def _json_array(instances: list[StoredInstance], base: str) -> Iterator[bytes]:
    """``[...]`` of each instance's metadata, in pieces of about 64 KiB."""
    pending, first = [b"["], True
    for instance in instances:
        try:
            found = instance_metadata(instance.path, instance.transfer_syntax, instance.uri(base))
        except FileNotFoundError:
            log.warning("dicomweb: the file of an instance is gone; its metadata left out")
            continue
        except _UNREADABLE as exc:
            log.warning(
                "dicomweb: an instance cannot be read (%s); its metadata left out",
                type(exc).__name__,
            )
            continue
        pending.append((b"" if first else b",") + json.dumps(found).encode())
        first = False
        if sum(len(piece) for piece in pending) > 65536:
            yield b"".join(pending)
            pending = []
    yield b"".join([*pending, b"]"])


# Frames and bulk data -------------------------------------------------------------------


@router.get(f"{INSTANCE}/frames/{{frames}}", dependencies=_BULK, responses=_MULTIPART)
def retrieve_frames(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
    study_uid: StudyUid, series_uid: SeriesUid, instance_uid: InstanceUid, frames: FrameList,
) -> StreamingResponse:  # fmt: skip
    """Frames of the instance, as stored: uncompressed as application/octet-stream, compressed
    in their own media type (image/jpeg, image/jls, image/jp2, ...)."""
    only_parameters(request)
    try:
        numbers = frame_numbers(frames)
    except FrameError as exc:
        raise bad_request(str(exc)) from None
    labs = caller.labs
    [instance] = stored_instances(session, settings, labs, study_uid, series_uid, instance_uid)
    session.close()  # the rest reads the file only
    return _frames(request, instance, numbers)


@router.get(f"{INSTANCE}/bulk/{{tag}}", dependencies=_BULK, responses=_MULTIPART)
def retrieve_bulk_data(
    request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
    study_uid: StudyUid, series_uid: SeriesUid, instance_uid: InstanceUid, tag: Tag,
) -> StreamingResponse:  # fmt: skip
    """A binary value the metadata gave as a BulkDataURI: the pixel data (every frame, one
    part each), or another top-level element (one application/octet-stream part)."""
    only_parameters(request)
    labs = caller.labs
    [instance] = stored_instances(session, settings, labs, study_uid, series_uid, instance_uid)
    session.close()  # the rest reads the file only
    if tag.upper() == PIXEL_DATA:
        return _frames(request, instance, None)
    require_octet_stream(accepted(request.headers.get("accept")))
    try:
        ds = dcmread(instance.path, stop_before_pixels=True)
    except _UNREADABLE as exc:
        raise _gone(exc) from None
    elem = ds.get(int(tag, 16))
    if elem is None or not isinstance(elem.value, bytes) or not elem.value:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"the instance has no bulk data {tag}")
    return multipart_response([Part(OCTET_STREAM, [elem.value])], OCTET_STREAM)


def _frames(
    request: Request, instance: StoredInstance, numbers: list[int] | None
) -> StreamingResponse:
    media = frame_choice(accepted(request.headers.get("accept")), instance.transfer_syntax)
    try:
        pixels = PixelFrames(instance.path)
        numbers = numbers or list(range(1, pixels.count + 1))
        pixels.check(numbers)
    except FrameError as exc:  # before ValueError, which it is
        raise bad_request(str(exc)) from None
    except (NoPixelData, *_UNREADABLE) as exc:
        raise _gone(exc) from None
    part_type = frame_part_type(instance.transfer_syntax)
    parts = (Part(part_type, [frame]) for frame in pixels.frames(numbers))
    return multipart_response(parts, media)


def _gone(exc: Exception) -> HTTPException:
    if isinstance(exc, FileNotFoundError):  # evicted meanwhile
        return HTTPException(status.HTTP_404_NOT_FOUND, "the file is not in the archive")
    if isinstance(exc, NoPixelData):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    log.warning("dicomweb: an instance cannot be read (%s)", type(exc).__name__)
    return HTTPException(status.HTTP_404_NOT_FOUND, "the instance's file cannot be read")

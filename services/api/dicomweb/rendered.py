"""Rendered images and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.4): a JPEG or PNG of a study,
series, instance or frame, as the previews of the REST API render them
(`services.api.previews`: the modality rescale, the object's window or its own range).

A study or series shows its middle image (the series preview), an instance its first frame,
a frame itself; one frame at a time. A thumbnail is the same image fitted into 128 pixels, or
into ``viewport=W,H``. ``quality`` (1 to 100, default 90) is the JPEG quality.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException, Request, Response, status
from PIL import Image
from pydicom.errors import InvalidDicomError

from services.api.audit import audited
from services.api.dependencies import CallerDep, SessionDep, SettingsDep
from services.api.dicomweb.frames import FrameError, NoPixelData, PixelFrames, frame_numbers
from services.api.dicomweb.media import accepted, rendered_type
from services.api.dicomweb.resources import (
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
)
from services.api.dicomweb.stored import StoredInstance, stored_instances
from services.api.previews import PreviewUnavailable, frame_image, middle_image
from shared.catalog.states import AuditAction

router = dicomweb_router()
THUMBNAIL = 128
_VIEWPORT = re.compile(r"^([1-9][0-9]{0,3}),([1-9][0-9]{0,3})$")
_IMAGE: dict[int | str, Any] = answers("image/jpeg")
_IMAGE[200]["content"]["image/png"] = {}


def _render(
    request: Request, instances: list[StoredInstance], one: bool, *, thumbnail: bool,
    frames: str | None = None,
) -> Response:  # fmt: skip
    quality, size = _options(only_parameters(request, ("quality", "viewport")), thumbnail)
    media_type = rendered_type(accepted(request.headers.get("accept")))
    try:
        if not one:
            pixels = middle_image([instance.path for instance in instances])
        else:
            pixels = frame_image(instances[0].path, _frame_index(instances[0].path, frames))
    except FrameError as exc:  # before ValueError, which it is
        raise bad_request(str(exc)) from None
    except (PreviewUnavailable, NoPixelData, FileNotFoundError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"nothing to render: {exc}") from None
    except (InvalidDicomError, ValueError, EOFError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "nothing to render: unreadable") from None
    return Response(_encode(pixels, media_type, quality, size), media_type=media_type)


def _options(params: dict[str, str], thumbnail: bool) -> tuple[int, tuple[int, int] | None]:
    quality = 90
    if "quality" in params:
        text = params["quality"]
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise bad_request("quality is an integer from 1 to 100")
        quality = int(text)
    size = (THUMBNAIL, THUMBNAIL) if thumbnail else None
    if "viewport" in params:
        found = _VIEWPORT.match(params["viewport"])
        if found is None:
            raise bad_request("viewport is WIDTH,HEIGHT in pixels (1 to 9999): 512,512")
        size = (int(found[1]), int(found[2]))
    return quality, size


def _frame_index(path: Path, frames: str | None) -> int:
    """The 0-based frame to render: the first, or the one frame of the path."""
    if frames is None:
        return 0
    numbers = frame_numbers(frames)
    if len(numbers) != 1:
        raise FrameError("a rendered frame is one frame: name one")
    PixelFrames(path).check(numbers)
    return numbers[0] - 1


def _encode(
    pixels: np.ndarray, media_type: str, quality: int, size: tuple[int, int] | None
) -> bytes:
    image = Image.fromarray(pixels)
    if size is not None:
        image.thumbnail(size)  # fits, keeping the aspect ratio; never enlarges
    buffer = BytesIO()
    if media_type == "image/jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _frame_route(thumbnail: bool) -> Callable[..., Response]:
    def frame(
        request: Request, caller: CallerDep, settings: SettingsDep, session: SessionDep,
        study_uid: StudyUid, series_uid: SeriesUid, instance_uid: InstanceUid,
        frames: FrameList,
    ) -> Response:  # fmt: skip
        labs = caller.labs
        found = stored_instances(session, settings, labs, study_uid, series_uid, instance_uid)
        session.close()
        return _render(request, found, True, thumbnail=thumbnail, frames=frames)

    return frame


for _view, _thumbnail in (("/rendered", False), ("/thumbnail", True)):
    _what = "A thumbnail" if _thumbnail else "A rendered image"
    add_resource_routes(
        router, _view, functools.partial(_render, thumbnail=_thumbnail),
        action=AuditAction.DICOMWEB_RENDERED, responses=_IMAGE,
        what=f"{_what} (image/jpeg or image/png) of the middle image or the first frame",
    )  # fmt: skip
    router.add_api_route(
        f"{INSTANCE}/frames/{{frames}}{_view}",
        _frame_route(_thumbnail),
        methods=["GET"],
        dependencies=[audited(AuditAction.DICOMWEB_RENDERED)],
        responses=_IMAGE,
        response_class=Response,
        name=f"frame{_view.replace('/', '_')}",
        description=f"{_what} (image/jpeg or image/png) of one frame.",
    )

"""A preview of a series: its middle image as a PNG; and the 8-bit pixels of any frame, which
DICOMweb's rendered images encode (services/api/dicomweb/rendered.py).

The image is chosen from the headers alone (read without the pixel data): the images are put
in slice order and the middle one is taken, and the middle frame of a multi-frame object.
Only that frame is then decoded, whatever its transfer syntax. Grey-scale pixels go through
the modality rescale and the first window of the object (the DICOM linear window function),
or are stretched over their own range when there is no usable window; colour images (after
pydicom's YBR to RGB conversion) are shown as they are. The PNG has the image's own size.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

log = logging.getLogger(__name__)


class PreviewUnavailable(Exception):
    """The series has nothing to show; the message says why."""


@dataclass(frozen=True)
class _Image:
    """An instance with image pixels, known by its header only."""

    path: Path
    header: Dataset

    @property
    def middle_frame(self) -> int:
        frames = _number(self.header.get("NumberOfFrames"))
        return max(int(frames or 1), 1) // 2


def render_preview(files: Sequence[Path]) -> bytes:
    """The PNG of the middle image of the series made of `files` (in any order)."""
    return _png(middle_image(files))


def middle_image(files: Sequence[Path]) -> np.ndarray:
    """The 8-bit grey (rows, columns) or RGB (rows, columns, 3) pixels of the middle image of
    the series made of `files` (in any order).

    Unreadable files are skipped; an image whose pixel data cannot be decoded gives way to
    the next one nearest the middle. Raises PreviewUnavailable when no image is left.
    """
    images = _in_slice_order(_read_images(files))
    while images:
        image = images.pop(len(images) // 2)
        try:
            return _rendered(image, image.middle_frame)
        except PreviewUnavailable:
            continue
    raise PreviewUnavailable("the series has no image with pixel data")


def frame_image(path: Path, frame: int) -> np.ndarray:
    """The 8-bit pixels of one frame (0-based) of the image at `path`, as `middle_image`."""
    images = _read_images([path])
    if not images:
        raise PreviewUnavailable("the instance is no image with pixel data")
    return _rendered(images[0], frame)


def _rendered(image: _Image, frame: int) -> np.ndarray:
    try:
        pixels = _decode(image, frame)
    except Exception as exc:  # noqa: BLE001 - whatever the decoders make of bad data
        log.warning("preview: an image could not be decoded (%s)", type(exc).__name__)
        raise PreviewUnavailable("the image could not be decoded") from None
    return _to_8bit(pixels, image.header, frame)


def _read_images(files: Sequence[Path]) -> list[_Image]:
    images: list[_Image] = []
    unreadable = 0
    for path in files:
        try:
            header = dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - whatever pydicom makes of a bad file
            unreadable += 1
            continue
        # Rows and Columns come with the pixel data (Image Pixel module), which the header
        # read stops before.
        if "Rows" in header and "Columns" in header:
            images.append(_Image(Path(path), header))
    if unreadable:
        log.warning("preview: %d of %d files could not be read", unreadable, len(files))
    return images


def _in_slice_order(images: list[_Image]) -> list[_Image]:
    """Sorted along the slice normal when all share one orientation, else by InstanceNumber,
    then by file name."""
    positions = _slice_positions([image.header for image in images])

    def key(indexed: tuple[int, _Image]) -> tuple[float, bool, float, str, str]:
        index, image = indexed
        number = _number(image.header.get("InstanceNumber"))
        position = positions[index] if positions is not None else 0.0
        return (position, number is None, number or 0.0, image.path.name, str(image.path))

    return [image for _, image in sorted(enumerate(images), key=key)]


def _slice_positions(headers: list[Dataset]) -> list[float] | None:
    """Each ImagePositionPatient projected on the common slice normal, or None."""
    try:
        orientations = np.array([_floats(h.ImageOrientationPatient, 6) for h in headers])
        positions = np.array([_floats(h.ImagePositionPatient, 3) for h in headers])
    except (AttributeError, TypeError, ValueError):
        return None
    if not headers or not np.allclose(orientations, orientations[0], atol=1e-3):
        return None
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    return [float(p) for p in positions @ normal]


def _decode(image: _Image, frame: int) -> np.ndarray:
    """The pixels of one frame: (rows, columns) or (rows, columns, samples), colour as RGB."""
    meta = getattr(image.header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax and syntax != DeflatedExplicitVRLittleEndian:
        return pixel_array(image.path, index=frame)  # reads that frame only
    # pixel_array's own parser needs the file meta and cannot inflate a deflated data set:
    # read the whole object.
    return pixel_array(_with_transfer_syntax(dcmread(image.path, force=True)), index=frame)


def _with_transfer_syntax(ds: Dataset) -> Dataset:
    """`ds` with a file meta transfer syntax, inferred from how it was read if missing."""
    ds.ensure_file_meta()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = (
                ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            )
    return ds


def _to_8bit(pixels: np.ndarray, header: Dataset, frame: int) -> np.ndarray:
    if pixels.ndim == 3:  # colour, already RGB
        if pixels.dtype == np.uint8:
            return pixels
        top = 2 ** int(_number(header.get("BitsStored")) or 16) - 1
        return _bytes(pixels.astype(np.float64) / top)
    values = _modality_values(pixels, header, frame)
    window = _window(header, frame)
    scaled = _apply_window(values, *window) if window else _stretch(values)
    if str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        scaled = 1.0 - scaled  # low values are white
    return _bytes(scaled)


def _modality_values(pixels: np.ndarray, header: Dataset, frame: int) -> np.ndarray:
    if "ModalityLUTSequence" in header:
        return apply_modality_lut(pixels, header).astype(np.float64)
    # Enhanced objects keep the rescale in the functional groups, which pydicom's
    # apply_rescale does not look into.
    slope = _number(_frame_attribute(header, "RescaleSlope", frame))
    intercept = _number(_frame_attribute(header, "RescaleIntercept", frame))
    values = pixels.astype(np.float64)
    if slope is not None:
        values *= slope
    if intercept is not None:
        values += intercept
    return values


def _window(header: Dataset, frame: int) -> tuple[float, float] | None:
    center = _number(_frame_attribute(header, "WindowCenter", frame))
    width = _number(_frame_attribute(header, "WindowWidth", frame))
    if center is None or width is None or width < 1:
        return None
    return center, width


def _apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear window function (PS3.3 C.11.2.1.2.1), onto 0..1."""
    if width == 1:  # a threshold at center - 0.5
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:  # a constant image shows black
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _bytes(scaled: np.ndarray) -> np.ndarray:
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# Attribute helpers -----------------------------------------------------------------------


def _frame_attribute(header: Dataset, keyword: str, frame: int) -> Any:
    """`keyword` at the top level, else in the frame's own or the shared functional groups
    of an enhanced object (one sequence deep, where the standard puts them)."""
    if keyword in header:
        return header.get(keyword)
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = header.get(groups)
        if not items or index >= len(items):
            continue
        for element in items[index]:
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return element.value[0].get(keyword)
    return None


def _number(value: Any) -> float | None:
    """The first value as a finite number, or None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if value else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _floats(value: Any, count: int) -> list[float]:
    numbers = [float(v) for v in value]
    if len(numbers) != count:
        raise ValueError(f"expected {count} values, found {len(numbers)}")
    return numbers

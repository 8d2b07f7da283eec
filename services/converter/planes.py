"""Where each 2D image of a series lies in the patient, read from the DICOM headers alone.

A `Plane` is one 2D image: a single-frame image, one tile of a Siemens mosaic, or one frame
of a multi-frame object, with the position of its first pixel, its row and column
directions and spacing (patient coordinates, LPS, mm), and a way to decode its pixels.
This is what the geometry guard (`guard`) holds every converted volume to, whichever
engine made it: no engine's reading of the headers enters here.

Mosaics: the position a mosaic carries is that of the whole mosaic image, as if it were one
slice; the first tile lies half the difference of the mosaic and tile sizes further in,
and tile `i` lies `i` slice spacings along Siemens' slice normal (CSA image header). The
spacing and each tile's position are checked against the slice centres of the protocol
(the CSA series header's `sSliceArray`), the positions the scanner was told to acquire.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

with warnings.catch_warnings():  # "experimental" is said of nibabel's DICOM readers, not this
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader

from .instances import Instance, as_float, as_int, as_list, find_attribute

# Tile centres farther than this from every protocol slice centre: the model is wrong.
_PROTOCOL_TOLERANCE_MM = 0.5
_PROTOCOL_SLICE = re.compile(
    r"sSliceArray\.asSlice\[(\d+)\]\.sPosition\.d(Sag|Cor|Tra)\s*=\s*(\S+)"
)
_AXES = {"Sag": 0, "Cor": 1, "Tra": 2}


class UnknownGeometry(Exception):
    """The headers do not say where an image lies; the message says what is missing."""


@dataclass(frozen=True)
class Plane:
    position: np.ndarray  # LPS mm, centre of the first pixel (row 0, column 0)
    row: np.ndarray  # unit vector along a row: the direction of increasing column index
    column: np.ndarray  # unit vector down a column: the direction of increasing row index
    spacing: tuple[float, float]  # mm between rows, between columns
    shape: tuple[int, int]  # rows, columns
    order: tuple[Any, ...]  # acquisition order among planes at one position
    pixels: Callable[[], np.ndarray]  # the stored values, rows x columns


def source_planes(images: Sequence[Instance], *, every_frame: bool = False) -> list[Plane]:
    """Every 2D image of `images` with where it lies; UnknownGeometry when a header lacks it.

    Per-frame and Siemens' private headers cost more to parse than the conversion: of a
    series of mosaics or multi-frame objects (one per volume, as Siemens writes fMRI and
    DWI), only the first and the last are read unless `every_frame`. They give the
    positions and the volumes the guard looks at, except where the objects make several
    volumes (echoes, say): see `frames_left_out`.
    """
    planes: list[Plane] = []
    many = [number for number, image in enumerate(images) if _many_planes(image)]
    parsed = set(many) if every_frame else set(many[:1] + many[-1:])
    for number, image in enumerate(images):
        decoded = _Decoded(image)
        if not _many_planes(image):
            planes.append(_single_plane(image, number, decoded))
        elif number not in parsed:
            continue
        elif image.is_mosaic:
            planes.extend(_mosaic_planes(image, number, decoded))
        else:
            planes.extend(_frame_planes(image, number, decoded))
    return planes


def frames_left_out(images: Sequence[Instance]) -> bool:
    """Whether `source_planes` leaves objects out unless asked for every frame."""
    return sum(1 for image in images if _many_planes(image)) > 2


def _many_planes(image: Instance) -> bool:
    """A mosaic or a multi-frame object: more than one plane in one object."""
    return image.frames > 1 or image.is_mosaic


class _Decoded:
    """An image's stored values, decoded once however many of its planes are looked at."""

    def __init__(self, image: Instance) -> None:
        self._image = image
        self._array: np.ndarray | None = None

    def part(self, cut: Callable[[np.ndarray], np.ndarray]) -> Callable[[], np.ndarray]:
        return lambda: cut(self.array())

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.asarray(self._image.ds.pixel_array)
        return self._array


def _orientation(value: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    numbers = [as_float(v) for v in as_list(value)]
    if len(numbers) != 6 or any(n is None for n in numbers):
        raise UnknownGeometry(f"{where}: no ImageOrientationPatient")
    vector = np.array(numbers, dtype=np.float64)
    row, column = vector[:3], vector[3:]
    if not (
        np.isclose(np.linalg.norm(row), 1, atol=1e-2)
        and np.isclose(np.linalg.norm(column), 1, atol=1e-2)
    ):
        raise UnknownGeometry(f"{where}: ImageOrientationPatient is not two unit vectors")
    return row / np.linalg.norm(row), column / np.linalg.norm(column)


def _vector(value: Any, length: int, what: str, where: str) -> np.ndarray:
    numbers = [as_float(v) for v in as_list(value)]
    if len(numbers) != length or any(n is None for n in numbers):
        raise UnknownGeometry(f"{where}: no {what}")
    return np.array(numbers, dtype=np.float64)


def _single_plane(image: Instance, number: int, decoded: _Decoded) -> Plane:
    ds = image.ds
    where = image.path.name
    row, column = _orientation(ds.get("ImageOrientationPatient"), where)
    position = _vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where)
    spacing = _vector(find_attribute(ds, "PixelSpacing"), 2, "PixelSpacing", where)
    shape = (as_int(ds.get("Rows")) or 0, as_int(ds.get("Columns")) or 0)
    return Plane(
        position,
        row,
        column,
        (spacing[0], spacing[1]),
        shape,
        _time_order(ds, number),
        decoded.part(lambda array: array),
    )


def _mosaic_planes(image: Instance, number: int, decoded: _Decoded) -> list[Plane]:
    ds = image.ds
    where = image.path.name
    header = _csa(ds, "image")
    count = _csa_number(header, "NumberOfImagesInMosaic")
    normal = _csa_numbers(header, "SliceNormalVector")
    if count is None or count < 1 or normal is None or len(normal) != 3:
        raise UnknownGeometry(
            f"{where}: a mosaic without Siemens' NumberOfImagesInMosaic and SliceNormalVector"
        )
    row, column = _orientation(ds.get("ImageOrientationPatient"), where)
    corner = _vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where)
    spacing = _vector(ds.get("PixelSpacing"), 2, "PixelSpacing", where)
    rows, columns = as_int(ds.get("Rows")) or 0, as_int(ds.get("Columns")) or 0
    per_side = math.ceil(math.sqrt(int(count)))
    tile_rows, tile_columns = rows // per_side, columns // per_side
    first = (
        corner
        + row * spacing[1] * (columns - tile_columns) / 2
        + column * spacing[0] * (rows - tile_rows) / 2
    )
    normal_vector = np.array(normal, dtype=np.float64)
    normal_vector /= np.linalg.norm(normal_vector)
    centres = _protocol_centres(ds)
    step = _slice_step(ds, centres, where)
    positions = [first + index * step * normal_vector for index in range(int(count))]
    if centres is not None:
        # Along the normal only: a protocol's slice centre may lie off the tile's centre in
        # plane (a shifted field of view), never across.
        for index, position in enumerate(positions):
            distance = float(np.min(np.abs((centres - position) @ normal_vector)))
            if distance > _PROTOCOL_TOLERANCE_MM:
                raise UnknownGeometry(
                    f"{where}: mosaic tile {index} lies {distance:.1f} mm from every slice "
                    "of the protocol"
                )

    def tile(index: int) -> Callable[[], np.ndarray]:
        top, left = divmod(index, per_side)

        def cut(array: np.ndarray) -> np.ndarray:
            return array[
                top * tile_rows : (top + 1) * tile_rows,
                left * tile_columns : (left + 1) * tile_columns,
            ]

        return decoded.part(cut)

    return [
        Plane(
            position,
            row,
            column,
            (spacing[0], spacing[1]),
            (tile_rows, tile_columns),
            _time_order(ds, number),
            tile(index),
        )
        for index, position in enumerate(positions)
    ]


def _slice_step(ds: Dataset, centres: np.ndarray | None, where: str) -> float:
    if centres is not None and len(centres) > 1:
        return float(np.linalg.norm(centres[1] - centres[0]))
    step = as_float(ds.get("SpacingBetweenSlices")) or as_float(ds.get("SliceThickness"))
    if step is None:
        raise UnknownGeometry(f"{where}: a mosaic without its slice spacing")
    return step


def _frame_planes(image: Instance, number: int, decoded: _Decoded) -> list[Plane]:
    ds = image.ds
    where = image.path.name
    if "GridFrameOffsetVector" in ds and "PerFrameFunctionalGroupsSequence" not in ds:
        return _grid_planes(image, number, decoded)
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not frames or len(frames) != image.frames:
        raise UnknownGeometry(f"{where}: a multi-frame object without per-frame positions")
    shape = (as_int(ds.get("Rows")) or 0, as_int(ds.get("Columns")) or 0)
    planes = []
    for index, item in enumerate(frames):
        groups = [item, shared[0]] if shared else [item]
        position = _vector(
            _group_value(groups, "PlanePositionSequence", "ImagePositionPatient"),
            3,
            f"ImagePositionPatient of frame {index + 1}",
            where,
        )
        row, column = _orientation(
            _group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
            f"{where} frame {index + 1}",
        )
        spacing = _vector(
            _group_value(groups, "PixelMeasuresSequence", "PixelSpacing"),
            2,
            f"PixelSpacing of frame {index + 1}",
            where,
        )
        planes.append(
            Plane(
                position,
                row,
                column,
                (spacing[0], spacing[1]),
                shape,
                (number, index),
                decoded.part(_frame(index)),
            )
        )
    return planes


def _grid_planes(image: Instance, number: int, decoded: _Decoded) -> list[Plane]:
    """An RT dose grid: one position, and each frame's offset along the normal (relative to
    it, or as absolute values whose first is the position's own)."""
    ds = image.ds
    where = image.path.name
    row, column = _orientation(ds.get("ImageOrientationPatient"), where)
    corner = _vector(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where)
    spacing = _vector(ds.get("PixelSpacing"), 2, "PixelSpacing", where)
    offsets = _vector(ds.get("GridFrameOffsetVector"), image.frames, "GridFrameOffsetVector", where)
    normal = np.cross(row, column)
    shape = (as_int(ds.get("Rows")) or 0, as_int(ds.get("Columns")) or 0)
    return [
        Plane(
            corner + (offset - offsets[0]) * normal,
            row,
            column,
            (spacing[0], spacing[1]),
            shape,
            (number, index),
            decoded.part(_frame(index)),
        )
        for index, offset in enumerate(offsets)
    ]


def _frame(index: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda array: array[index]


def _group_value(groups: list[Dataset], sequence: str, keyword: str) -> Any:
    for group in groups:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _time_order(ds: Dataset, number: int) -> tuple[Any, ...]:
    return (as_int(ds.get("AcquisitionNumber")) or 0, as_int(ds.get("InstanceNumber")) or 0, number)


def _csa(ds: Dataset, kind: str) -> dict[str, Any]:
    try:
        header = csareader.get_csa_header(ds, kind)
    except Exception:  # noqa: BLE001 - a damaged private header says nothing
        return {}
    return header.get("tags", {}) if header else {}


def _csa_numbers(tags: dict[str, Any], name: str) -> list[float] | None:
    items = tags.get(name, {}).get("items") or []
    try:
        return [float(item) for item in items]
    except (TypeError, ValueError):
        return None


def _csa_number(tags: dict[str, Any], name: str) -> float | None:
    numbers = _csa_numbers(tags, name)
    return numbers[0] if numbers else None


def _protocol_centres(ds: Dataset) -> np.ndarray | None:
    """The slice centres of the protocol (LPS mm, in protocol order), or None."""
    tags = _csa(ds, "series")
    items = tags.get("MrPhoenixProtocol", {}).get("items") or []
    if not items or not isinstance(items[0], str):
        return None
    slices: dict[int, list[float]] = {}
    for index, axis, value in _PROTOCOL_SLICE.findall(items[0]):
        try:
            number = float(value)
        except ValueError:
            return None
        slices.setdefault(int(index), [0.0, 0.0, 0.0])[_AXES[axis]] = number
    if not slices:
        return None
    return np.array([slices[i] for i in sorted(slices)], dtype=np.float64)

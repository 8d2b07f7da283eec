"""The geometry guard: no volume is published that disagrees with the DICOM headers.

Whatever engine made a volume, its affine must put every slice where the headers say an
image lies, and the voxels of a slice must be that image's pixels, not its neighbour's and
not mirrored. `check_volume` holds a NIfTI image to the `Plane`s of its source images:

1. Orientation: each image's rows and columns run along voxel axes of the volume, with the
   spacing the headers give.
2. Position: every slice of the volume (voxel (0, 0) of the slice, through the affine) lies
   within `POSITION_TOLERANCE_MM` of an image of the same orientation, and is the image's
   first pixel or one of its other corners.
3. Voxels: the first, middle and last slices, in the first and last volume of a time
   series, equal an image at their position up to a linear scaling (engines store rescaled
   or raw values): a slice order reversed under an affine that says otherwise, or a slice
   shifted by one, fails here.

A volume an engine resampled (dcm2niix's gantry tilt correction, its equalised spacing)
has no slice equal to an image. It is held to check 1, every image must lie within the
volume's slices, and the first and last images must each resemble the slice nearest to
them more than they resemble each other's: the order is not reversed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .planes import Plane

POSITION_TOLERANCE_MM = 0.1
_AXIS_TOLERANCE = 0.01  # of a voxel, per pixel step
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # NIfTI's RAS to DICOM's LPS, and back
_MAX_CANDIDATES = 64  # images at one position tried for one slice


class GeometryMismatch(Exception):
    """The volume disagrees with the headers; the message says where."""


@dataclass(frozen=True)
class _Layout:
    """How one image's pixels map into the volume: axes, directions and its slice."""

    column_axis: int
    column_step: int  # +1 or -1: the voxel index change for one column to the right
    row_axis: int
    row_step: int
    slice_axis: int


def check_volume(image: nib.Nifti1Image, planes: Sequence[Plane], *, resampled: bool) -> None:
    """Raise GeometryMismatch unless `image` agrees with the images in `planes`."""
    affine = _LPS @ np.asarray(image.affine, dtype=np.float64)
    matrix = affine[:3, :3]
    if abs(np.linalg.det(matrix)) < 1e-9:
        raise GeometryMismatch("the affine is singular")
    inverse = np.linalg.inv(affine)
    shape = _spatial_shape(image)
    layouts = {id(p): _layout(p, inverse) for p in planes}
    usable = [p for p in planes if layouts[id(p)] is not None]
    if not usable:
        raise GeometryMismatch("no image's rows and columns run along the volume's axes")
    layout = layouts[id(usable[0])]
    assert layout is not None
    same = [p for p in usable if layouts[id(p)] == layout]
    if resampled:
        _check_resampled(image, layout, inverse, same)
        return
    sized = [p for p in same if p.shape == (shape[layout.row_axis], shape[layout.column_axis])]
    positions = np.array([p.position for p in sized]).reshape(-1, 3)
    at_slice: dict[int, list[Plane]] = {}
    for k in range(shape[layout.slice_axis]):
        where = _origin(k, layout, shape, affine)
        distances = np.linalg.norm(positions - where, axis=1)
        at_slice[k] = [sized[i] for i in np.flatnonzero(distances <= POSITION_TOLERANCE_MM)]
        if not at_slice[k]:
            nearest = f"{distances.min():.2f} mm" if len(distances) else "none"
            raise GeometryMismatch(
                f"slice {k} of the volume lies at {_mm(where)}, where no image of its size "
                f"lies (the nearest: {nearest} away)"
            )
    for k in sorted({0, (len(at_slice) - 1) // 2, len(at_slice) - 1}):
        candidates = sorted(at_slice[k], key=lambda p: p.order)
        for t in sorted({0, _volumes(image) - 1}):
            voxels = _slice(image, layout, k, t)
            ordered = candidates if t == 0 else candidates[::-1]
            if not any(_equal_up_to_scaling(voxels, p.pixels()) for p in ordered[:_MAX_CANDIDATES]):
                raise GeometryMismatch(
                    f"the voxels of slice {k} (volume {t}) are not the pixels of the image at "
                    f"its position {_mm(_origin(k, layout, shape, affine))}: mirrored or out "
                    "of order"
                )


def _check_resampled(
    image: nib.Nifti1Image, layout: _Layout, inverse: np.ndarray, planes: Sequence[Plane]
) -> None:
    count = _spatial_shape(image)[layout.slice_axis]
    where = {
        id(p): float((inverse @ np.append(p.position, 1.0))[layout.slice_axis]) for p in planes
    }
    outside = [w for w in where.values() if not -0.5 <= w <= count - 0.5]
    if outside:
        raise GeometryMismatch(
            f"an image lies at slice {outside[0]:.1f}, outside the volume's {count} slices"
        )
    first = min(planes, key=lambda p: (where[id(p)], p.order))
    last = max(planes, key=lambda p: (where[id(p)], [-n for n in p.order]))
    k_first, k_last = round(where[id(first)]), round(where[id(last)])
    if k_first == k_last:
        return
    near_first = _slice(image, layout, k_first, 0)
    near_last = _slice(image, layout, k_last, 0)

    def likeness(voxels: np.ndarray, plane: Plane) -> float:
        return _likeness(_under(voxels, plane, layout, inverse), plane.pixels())

    if likeness(near_first, first) <= likeness(near_first, last) or (
        likeness(near_last, last) <= likeness(near_last, first)
    ):
        raise GeometryMismatch(
            f"slices {k_first} and {k_last} resemble the images at each other's position: "
            "the slice order is reversed"
        )


def _under(voxels: np.ndarray, plane: Plane, layout: _Layout, inverse: np.ndarray) -> np.ndarray:
    """The part of a (rows x columns) slice that `plane`'s image covers, in a volume whose
    slices an engine padded (a tilt correction shifts each slice's rows)."""
    corner = (inverse @ np.append(plane.position, 1.0))[:3]
    starts = []
    for axis, step, size in (
        (layout.row_axis, layout.row_step, voxels.shape[0]),
        (layout.column_axis, layout.column_step, voxels.shape[1]),
    ):
        start = round(corner[axis]) if step > 0 else size - 1 - round(corner[axis])
        starts.append(max(start, 0))
    rows, columns = plane.shape
    return voxels[starts[0] : starts[0] + rows, starts[1] : starts[1] + columns]


def _likeness(voxels: np.ndarray, pixels: np.ndarray) -> float:
    if voxels.shape != pixels.shape:
        return -1.0
    x, y = pixels.astype(np.float64).ravel(), voxels.ravel()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _spatial_shape(image: nib.Nifti1Image) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in image.shape) + (1, 1, 1)
    return (shape[0], shape[1], shape[2])


def _volumes(image: nib.Nifti1Image) -> int:
    return int(np.prod(image.shape[3:])) if len(image.shape) > 3 else 1


def _layout(plane: Plane, inverse: np.ndarray) -> _Layout | None:
    """The voxel axes along which `plane`'s columns and rows run, or None if they do not."""
    column = inverse[:3, :3] @ (plane.row * plane.spacing[1])
    row = inverse[:3, :3] @ (plane.column * plane.spacing[0])
    column_axis, column_step = _unit_axis(column)
    row_axis, row_step = _unit_axis(row)
    if column_axis is None or row_axis is None or column_axis == row_axis:
        return None
    slice_axis = ({0, 1, 2} - {column_axis, row_axis}).pop()
    return _Layout(column_axis, column_step, row_axis, row_step, slice_axis)


def _unit_axis(step: np.ndarray) -> tuple[int | None, int]:
    axis = int(np.argmax(np.abs(step)))
    sign = 1 if step[axis] > 0 else -1
    target = np.zeros(3)
    target[axis] = sign
    if np.max(np.abs(step - target)) > _AXIS_TOLERANCE:
        return None, 0
    return axis, sign


def _corner(k: int, layout: _Layout, shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel indices of the first pixel of an image lying in slice k."""
    index = np.zeros(3)
    index[layout.slice_axis] = k
    index[layout.column_axis] = 0 if layout.column_step > 0 else shape[layout.column_axis] - 1
    index[layout.row_axis] = 0 if layout.row_step > 0 else shape[layout.row_axis] - 1
    return index


def _origin(k: int, layout: _Layout, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Where, in patient coordinates (LPS mm), an image lying in slice k has its first pixel."""
    return (affine @ np.append(_corner(k, layout, shape), 1.0))[:3]


def _mm(position: np.ndarray) -> str:
    x, y, z = position
    return f"({x:.1f}, {y:.1f}, {z:.1f}) mm"


def _slice(image: nib.Nifti1Image, layout: _Layout, k: int, t: int) -> np.ndarray:
    """Slice k of volume t as rows x columns of its image."""
    index: list[int | slice] = [slice(None)] * len(image.shape)
    index[layout.slice_axis] = k
    if len(image.shape) > 3:
        extra = np.unravel_index(t, image.shape[3:])
        for axis, value in enumerate(extra, start=3):
            index[axis] = int(value)
    voxels = np.asarray(image.dataobj[tuple(index)], dtype=np.float64)
    if voxels.ndim != 2:
        voxels = voxels.reshape(
            image.shape[min(layout.column_axis, layout.row_axis)],
            image.shape[max(layout.column_axis, layout.row_axis)],
        )
    if layout.row_axis > layout.column_axis:
        voxels = voxels.T  # now [row, column]
    return voxels[:: layout.row_step, :: layout.column_step]


def _equal_up_to_scaling(voxels: np.ndarray, pixels: np.ndarray) -> bool:
    """voxels == a * pixels + b for some a != 0, within rounding."""
    if voxels.shape != pixels.shape:
        return False
    x = pixels.astype(np.float64).ravel()
    y = voxels.ravel()
    if np.ptp(x) == 0:
        return bool(np.ptp(y) == 0)
    slope, intercept = np.polyfit(x, y, 1)
    if slope == 0:
        return False
    residual = np.max(np.abs(y - (slope * x + intercept)))
    return bool(residual <= 1e-3 * max(float(np.ptp(y)), 1e-12))

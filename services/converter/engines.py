"""What the two conversion engines give, and dicom2nifti, which converts in process (dcm2niix,
the PyPI binary, is in `dcm2niix_engine`).

Both write uncompressed NIfTI into a scratch folder; `conversion` compresses and files them.

dicom2nifti applies the rescale (and so writes float64) whenever RescaleSlope/Intercept are
present; `restore_stored_type` undoes that where it is exact, so that a 16-bit series stays
a 16-bit NIfTI with scl_slope/scl_inter. Philips images get dcm2niix's "precise" floating
point scaling (0x2005,0x100E), the default of the reference converter.
"""

from __future__ import annotations

import copy
import errno
import importlib.metadata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import dicom2nifti.settings as settings
import nibabel as nib
import numpy as np
import pydicom
from dicom2nifti.convert_dicom import dicom_array_to_nifti
from dicom2nifti.image_reorientation import reorient_image

from .instances import Instance, as_float, as_text, private_value


class EngineError(Exception):
    """An engine could not convert the images; the message says why.

    `out_of_space` when it could not write for want of disk space or quota: the disk's
    fault, not the images'.
    """

    def __init__(self, message: str, *, out_of_space: bool = False) -> None:
        super().__init__(message)
        self.out_of_space = out_of_space


_FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error`, or an error that led to it, is a full disk or quota."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.errno in _FULL_DISK:
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


class IgnoredByDcm2niix(EngineError):
    """dcm2niix -i y wrote nothing for the images (derived, localizer, 2D, or otherwise
    not a volume to it): the series is skipped, not failed."""


@dataclass(frozen=True)
class EngineOutput:
    """One volume an engine wrote (uncompressed) into the scratch folder."""

    suffix: str  # appended to the volume's own suffix
    nifti: Path
    metadata: dict[str, Any] = field(default_factory=dict)  # the engine's own sidecar keys
    notes: tuple[str, ...] = ()
    resampled: bool = False  # the engine resampled the images (tilt, unequal spacing)
    bval: Path | None = None  # diffusion: b-values and vectors (FSL, image space)
    bvec: Path | None = None

    @property
    def diffusion(self) -> bool:
        return self.bval is not None


@lru_cache(maxsize=1)
def dicom2nifti_version() -> str:
    return importlib.metadata.version("dicom2nifti")


def dicom2nifti_name() -> str:
    return f"dicom2nifti {dicom2nifti_version()}"


# dicom2nifti ------------------------------------------------------------------------------

_D2N_SETTINGS = {
    # We group and filter the images ourselves: a stack of two or three slices is a volume.
    "validate_slicecount": False,
    "validate_orientation": True,
    "validate_orthogonal": True,  # gantry tilt: raise, and dcm2niix corrects it
    "validate_slice_increment": True,  # missing slices: raise, and dcm2niix equalises
    "validate_instance_number": False,
    "validate_multiframe_implicit": True,
    "pydicom_read_force": False,
    "resample": False,
    "resample_padding": 0,
    "resample_spline_interpolation_order": 0,
}


@contextmanager
def _dicom2nifti_settings() -> Iterator[None]:
    """dicom2nifti's module-level settings as we need them, restored afterwards."""
    saved = {name: getattr(settings, name) for name in _D2N_SETTINGS}
    try:
        for name, value in _D2N_SETTINGS.items():
            setattr(settings, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(settings, name, value)


def run_dicom2nifti(images: Sequence[Instance], scratch: Path) -> EngineOutput:
    """Convert one stack (or time series of stacks) of single-frame images with dicom2nifti."""
    scratch.mkdir(parents=True, exist_ok=True)
    with _dicom2nifti_settings():
        try:
            datasets = _datasets_for_dicom2nifti(images)
            converted = _dicom2nifti_volume(datasets, scratch)
        except Exception as exc:  # noqa: BLE001 - any failure of the engine means "fall back"
            raise EngineError(
                f"dicom2nifti: {type(exc).__name__}: {exc}", out_of_space=is_out_of_space(exc)
            ) from exc
    _check_voxel_count(converted, images)
    image, notes, metadata = restore_stored_type(converted, images)
    path = scratch / "volume.nii"
    nib.save(image, path)
    return EngineOutput("", path, metadata, notes)


def _datasets_for_dicom2nifti(images: Sequence[Instance]) -> list[pydicom.Dataset]:
    """The headers we already read (pixel data still deferred: read when decoded).

    Where every image has the same rescale, the copies lack it: dicom2nifti then keeps the
    stored integers instead of building (and reorienting) a float64 volume that
    `restore_stored_type` would only turn back into integers; the header gets the rescale
    from the original headers instead.
    """
    datasets = [_view(image.ds) for image in images]
    if _strippable_rescale(images):
        for ds in datasets:
            del ds.RescaleSlope
            del ds.RescaleIntercept
    return datasets


class _SliceView(pydicom.Dataset):
    """A header as handed to dicom2nifti.

    dicom2nifti deep-copies every slice before decoding it, only so that the
    decoded pixels are not kept on the original. A copy with its own element
    mapping does that as well, at a fraction of the cost of copying long
    private headers (most of the time of a small series went there).
    """

    def __deepcopy__(self, memo: dict[int, object]) -> pydicom.Dataset:
        return _shallow_copy(self)

    @property
    def pixel_array(self) -> np.ndarray:
        """Decoded once per copy. dicom2nifti asks again for every slice sharing a position
        with another (each time point of an fMRI run), and pydicom's own cache check costs
        about as much as decoding a small image."""
        array = self.__dict__.get("_decoded")
        if array is None:
            array = _native_pixels(self)
            if array is None:
                array = pydicom.Dataset.pixel_array.fget(self)  # type: ignore[attr-defined]
            self.__dict__["_decoded"] = array
        return array


_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


def _native_pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    """A single-frame grey image stored uncompressed, little endian, as pydicom decodes it
    (no masking of unused bits, no sign correction); None for anything else."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or meta.get("TransferSyntaxUID") not in _NATIVE_LITTLE_ENDIAN:
        return None
    if ds.get("SamplesPerPixel") != 1 or (ds.get("NumberOfFrames") or 1) != 1:
        return None
    bits, signed = ds.get("BitsAllocated"), ds.get("PixelRepresentation")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if bits not in (8, 16, 32) or signed not in (0, 1) or not rows or not columns:
        return None
    dtype = np.dtype(f"<{'ui'[signed]}{bits // 8}")
    data = ds.get("PixelData")
    if not isinstance(data, bytes) or len(data) < rows * columns * dtype.itemsize:
        return None
    return np.frombuffer(data, dtype, rows * columns).reshape(rows, columns).copy()


def _view(ds: pydicom.Dataset) -> pydicom.Dataset:
    view = _shallow_copy(ds)
    view.__class__ = _SliceView
    return view


def _shallow_copy(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy with its own element mapping, sharing the (unmodified) elements.

    A deep copy costs as much as the conversion for long private headers (GE, Siemens);
    `Dataset.copy` shares the mapping, so deleting from it would alter the original.
    """
    clone = copy.copy(ds)
    clone._dict = dict(ds._dict)  # noqa: SLF001 - pydicom has no public way to do this
    return clone


def _strippable_rescale(images: Sequence[Instance]) -> bool:
    """Integer pixel data with one explicit rescale (no modality LUT) for all images."""
    first = images[0].ds
    if _stored_dtype(first) is None:
        return False
    for image in images:
        ds = image.ds
        if "PixelData" not in ds or "ModalityLUTSequence" in ds:
            return False
        if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
            return False
    return len({_rescale(image.ds) for image in images}) == 1


def _dicom2nifti_volume(datasets: list[pydicom.Dataset], scratch: Path) -> nib.Nifti1Image:
    """dicom2nifti's LAS-reoriented volume, kept in memory.

    With no output file dicom2nifti skips writing (and gzipping) its volume; only its
    reorientation step always writes, so it writes an uncompressed file we then ignore.
    """
    result = dicom_array_to_nifti(datasets, None, reorient_nifti=False)
    return reorient_image(result["NII"], str(scratch / "dicom2nifti.nii"))


def _check_voxel_count(image: nib.Nifti1Image, images: Sequence[Instance]) -> None:
    """dicom2nifti silently drops or merges images in some cases: every pixel must arrive."""
    if any(i.is_mosaic for i in images):
        volumes = image.shape[3] if len(image.shape) > 3 else 1
        if volumes != len(images):
            raise EngineError(
                f"dicom2nifti made {volumes} volume(s) of {len(images)} mosaic image(s)"
            )
        return
    expected = sum(
        (as_float(i.ds.get("Rows")) or 0) * (as_float(i.ds.get("Columns")) or 0) for i in images
    )
    if int(np.prod(image.shape[:4])) != int(expected):
        raise EngineError(
            f"dicom2nifti made a {image.shape} volume of {len(images)} images: some were "
            "dropped or merged"
        )


def restore_stored_type(
    image: nib.Nifti1Image, images: Sequence[Instance]
) -> tuple[nib.Nifti1Image, tuple[str, ...], dict[str, Any]]:
    """The stored integers with scl_slope/scl_inter, where dicom2nifti's values allow it."""
    data = np.asanyarray(image.dataobj)
    first = images[0].ds
    notes: list[str] = []
    metadata: dict[str, Any] = {}
    stored = _stored_dtype(first)
    rescales = {_rescale(i.ds) for i in images}
    raw: np.ndarray | None = None
    slope, inter = 1.0, 0.0
    if stored is not None and len(rescales) == 1 and data.dtype.kind in "iuf":
        slope, inter = rescales.pop()
        raw = _invert_rescale(data, slope, inter, stored)
    if raw is None:
        if data.dtype.kind == "f" and data.dtype != np.float32:
            data = data.astype(np.float32)
            notes.append("stored as float32: the rescale varies between images or is not exact")
        elif data.dtype.byteorder not in "=|":
            data = data.astype(data.dtype.newbyteorder("="))
        result = nib.Nifti1Image(data, image.affine)
        result.header.set_slope_inter(1.0, 0.0)
    else:
        philips = _philips_precise(images, slope, inter)
        if philips is not None:
            slope, inter, metadata = philips
        result = nib.Nifti1Image(raw, image.affine)
        result.header.set_slope_inter(slope, inter)
    _finish_header(result, first)
    return result, tuple(notes), metadata


def _stored_dtype(ds: pydicom.Dataset) -> np.dtype[Any] | None:
    bits = as_float(ds.get("BitsAllocated"))
    if bits not in (8, 16, 32) or as_float(ds.get("SamplesPerPixel") or 1) != 1:
        return None
    signed = as_float(ds.get("PixelRepresentation")) == 1
    return np.dtype(f"{'i' if signed else 'u'}{int(bits or 0) // 8}")


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    """The rescale pydicom (and so dicom2nifti) applies: both attributes, or none."""
    if "RescaleSlope" in ds and "RescaleIntercept" in ds and "ModalityLUTSequence" not in ds:
        slope = as_float(ds.RescaleSlope)
        inter = as_float(ds.RescaleIntercept)
        if slope is not None and inter is not None:
            return slope, inter
    return 1.0, 0.0


def _invert_rescale(
    data: np.ndarray, slope: float, inter: float, stored: np.dtype[Any]
) -> np.ndarray | None:
    limits = np.iinfo(stored)
    if data.dtype.kind in "iu":
        # pydicom's rescale always gives floats: integers are stored values (we removed the
        # rescale, or dicom2nifti's mosaic path, for one, never applies the rescale it reads).
        if np.can_cast(data.dtype, stored):
            return data.astype(stored, copy=False)
        candidate = data
    else:
        if slope == 0:
            return None
        candidate = np.rint((data.astype(np.float64) - inter) / slope)
        if not np.array_equal(candidate * slope + inter, data):
            return None
    if candidate.size and (candidate.min() < limits.min or candidate.max() > limits.max):
        return None
    return candidate.astype(stored)


def _philips_precise(
    images: Sequence[Instance], slope: float, inter: float
) -> tuple[float, float, dict[str, Any]] | None:
    """dcm2niix's Philips floating point values: FP = (SV * RS + RI) / (RS * SS)."""
    first = images[0].ds
    if "PHILIPS" not in as_text(first.get("Manufacturer")).upper():
        return None
    scales = {
        as_float(private_value(i.ds, 0x2005, "Philips MR Imaging DD 001", 0x0E)) for i in images
    }
    if len(scales) != 1:
        return None
    scale = scales.pop()
    if scale is None or scale == 0 or slope == 0:
        return None
    rs, ri, ss = np.float32(slope), np.float32(inter), np.float32(scale)
    at0 = (np.float32(0) * rs + ri) / (rs * ss)
    at1 = (np.float32(1) * rs + ri) / (rs * ss)
    metadata = {
        "PhilipsRescaleSlope": slope,
        "PhilipsRescaleIntercept": inter,
        "PhilipsScaleSlope": float(scale),
        "UsePhilipsFloatNotDisplayScaling": 1,
    }
    return float(at1 - at0), float(at0), metadata


def _finish_header(image: nib.Nifti1Image, ds: pydicom.Dataset) -> None:
    header = image.header
    header.set_xyzt_units("mm", "sec")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    if len(image.shape) > 3:
        tr = as_float(ds.get("RepetitionTime"))
        zooms = list(header.get_zooms())
        zooms[3] = tr / 1000.0 if tr else 1.0
        header.set_zooms(zooms)
    header["descrip"] = f"{dicom2nifti_name()}"[:79].encode()

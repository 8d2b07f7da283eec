"""Copies of a real instance as senders re-send them: whole, without pixel data, cut short,
of another SOP class, another shape, or with a corrected header (`shared.overwrite`)."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import SecondaryCaptureImageStorage

from shared.headers import meta_places

GE_FMRI = "ge_fmri_epi_4d/dicom"  # 50 slices of 64 x 64: 10 slices x 5 volumes
Derive = Callable[[Path], bytes]


def _saved(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def without_pixels(source: Path) -> bytes:
    dataset = dcmread(source)
    del dataset.PixelData
    return _saved(dataset)


def cut_short(source: Path) -> bytes:
    """Pixel data of half the bytes rows, columns and bits ask for: a whole object still."""
    dataset = dcmread(source)
    dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]
    return _saved(dataset)


def of_another_class(source: Path) -> bytes:
    dataset = dcmread(source)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    return _saved(dataset)


def of_another_shape(source: Path) -> bytes:
    """Half the rows, and the pixel data to match."""
    dataset = dcmread(source)
    dataset.Rows = dataset.Rows // 2
    dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]
    return _saved(dataset)


def corrected(source: Path) -> bytes:
    """The same pixels with a corrected header: what a legitimate correction sends."""
    dataset = dcmread(source)
    dataset.ImageComments = "corrected"
    dataset.SeriesDescription = f"{dataset.get('SeriesDescription', '')} corrected"
    return _saved(dataset)


def same_data_set(source: Path) -> bytes:
    """The same data set, byte for byte, behind other file meta information (another
    sender's, as the receiver writes it)."""
    content = source.read_bytes()
    _, start = meta_places(content)
    meta = read_file_meta_info(source)
    meta.SourceApplicationEntityTitle = "OTHERSCU"
    meta.ImplementationVersionName = "OTHER_SENDER"
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return content[:128] + b"DICM" + buffer.getvalue() + content[start:]


def written(folder: Path, name: str, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    return path

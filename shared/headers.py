"""Reading what dcmdb needs from a DICOM header, and nothing more.

Pixel data is never decoded here: the receiver reads the identifying UIDs from
the bytes as received, the sorter reads the header up to the pixel data.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from shared.errors import MissingIdentifier, UnreadableObject

_SERIES_INSTANCE_UID = Tag(0x0020, 0x000E)


@dataclass(frozen=True)
class Identifiers:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def read_identifiers(dataset: bytes, transfer_syntax_uid: str) -> Identifiers:
    """The four UIDs of a data set encoded in ``transfer_syntax_uid``.

    Raises UnreadableObject when the bytes do not parse or a UID is missing.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        try:
            dataset = zlib.decompress(dataset, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise UnreadableObject(f"deflated data set does not inflate: {exc}") from exc
    try:
        parsed = read_dataset(
            BytesIO(dataset),
            is_implicit_VR=transfer_syntax_uid == ImplicitVRLittleEndian,
            is_little_endian=transfer_syntax_uid != ExplicitVRBigEndian,
            stop_when=_after_series_uid,
        )
        return _identifiers(parsed)
    except UnreadableObject:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise UnreadableObject(f"data set does not parse: {exc.__class__.__name__}") from exc


def _after_series_uid(tag: BaseTag, _vr: Any, _length: int) -> bool:
    return tag > _SERIES_INSTANCE_UID


def _identifiers(dataset: Dataset) -> Identifiers:
    values = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(dataset.get(keyword, "") or "").strip()
        if not value:
            raise MissingIdentifier(f"{keyword} is missing")
        if len(value) > 64 or not value.isascii():
            raise MissingIdentifier(f"{keyword} is not a valid UID")
        values[keyword] = value
    return Identifiers(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
    )


def read_header(path: Path) -> Dataset:
    """The header of a stored instance, up to (not including) the pixel data."""
    try:
        return dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableObject(f"header does not parse: {exc.__class__.__name__}") from exc


def identifiers_of(dataset: Dataset) -> Identifiers:
    """The four UIDs of an already parsed header; UnreadableObject if one is missing."""
    return _identifiers(dataset)


def text(dataset: Dataset, keyword: str) -> str:
    """A tag's value as clean text, '' when absent, empty or undecodable."""
    try:
        value = dataset.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    return str(value).strip().replace("\x00", "")


def integer(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None

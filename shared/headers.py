"""Reading what dcmdb needs from a DICOM header, and nothing more.

Pixel data is never decoded here: the receiver reads the identifying UIDs from
the bytes as received, the sorter reads the header up to the pixel data.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from shared.errors import MissingIdentifier, UnreadableObject

_UID_TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}


@dataclass(frozen=True)
class Identifiers:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


def read_identifiers(dataset: bytes, transfer_syntax_uid: str) -> Identifiers:
    """The four UIDs of a data set encoded in ``transfer_syntax_uid``.

    The whole data set is walked, so one cut short in transfer is refused too.
    Raises UnreadableObject when the bytes do not parse, MissingIdentifier when
    a UID is absent or invalid.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        dataset = _inflate(dataset)
    walker = _Walker(
        dataset,
        implicit=transfer_syntax_uid == ImplicitVRLittleEndian,
        little_endian=transfer_syntax_uid != ExplicitVRBigEndian,
    )
    walker.walk()
    values = {}
    for keyword, tag in _UID_TAGS.items():
        raw = walker.top_level.get(tag, b"")
        try:
            values[keyword] = raw.rstrip(b"\0 ").decode("ascii").strip()
        except UnicodeDecodeError:
            values[keyword] = "\udcff"  # not ASCII: refused as invalid below
    return _identifiers(values)


def _inflate(dataset: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(dataset)
    except zlib.error as exc:
        raise UnreadableObject(f"deflated data set does not inflate: {exc}") from exc
    if not inflater.eof:
        raise UnreadableObject("deflated data set is cut short")
    return inflated


_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32


class _Walker:
    """Walks every element header of a data set to its end, without decoding values.

    pydicom reads a truncated data set without complaint, so this is what
    tells a complete object from one cut short in transfer. Top-level values
    of the identifying UIDs are kept on the way.
    """

    def __init__(self, data: bytes, *, implicit: bool, little_endian: bool) -> None:
        order = "<" if little_endian else ">"
        self.data, self.implicit = data, implicit
        self.tag_format, self.u16, self.u32 = f"{order}HH", f"{order}H", f"{order}L"
        self.top_level: dict[int, bytes] = {}
        self._wanted = frozenset(_UID_TAGS.values())

    def walk(self) -> None:
        if self.elements(0, len(self.data), depth=0, until=None) != len(self.data):
            raise UnreadableObject("data set ends inside an element")

    def header(self, offset: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR, value length, value offset) of the element at ``offset``."""
        data = self.data
        if offset + 8 > len(data):
            raise UnreadableObject("data set ends inside an element header")
        group, element = struct.unpack_from(self.tag_format, data, offset)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:
            return tag, None, struct.unpack_from(self.u32, data, offset + 4)[0], offset + 8
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            if offset + 12 > len(data):
                raise UnreadableObject("data set ends inside an element header")
            return tag, vr, struct.unpack_from(self.u32, data, offset + 8)[0], offset + 12
        return tag, vr, struct.unpack_from(self.u16, data, offset + 6)[0], offset + 8

    def elements(self, offset: int, end: int, depth: int, until: int | None) -> int:
        """Walk elements from ``offset``; stop at ``end`` or after the ``until`` delimiter."""
        if depth > _MAX_DEPTH:
            raise UnreadableObject("sequences nested too deeply")
        while offset < end:
            tag, vr, length, value = self.header(offset)
            if tag == until:
                return value
            if length != _UNDEFINED:
                offset = value + length
                if offset > end:
                    raise UnreadableObject("data set ends inside an element")
                if depth == 0 and tag in self._wanted:
                    self.top_level[tag] = self.data[value:offset]
                continue
            if vr not in (None, b"SQ", b"UN", b"OB", b"OW"):
                raise UnreadableObject("undefined length on an element that cannot have one")
            offset = self.items(value, end, depth + 1)
        if until is not None:
            raise UnreadableObject("sequence or item not terminated")
        return offset

    def items(self, offset: int, end: int, depth: int) -> int:
        """Walk the items of an undefined-length sequence or encapsulated pixel data."""
        while True:
            tag, _vr, length, value = self.header(offset)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise UnreadableObject("expected an item in a sequence")
            if length == _UNDEFINED:
                offset = self.elements(value, end, depth, until=_ITEM_END)
            else:
                offset = value + length
                if offset > end:
                    raise UnreadableObject("data set ends inside a sequence item")


def _identifiers(found: Mapping[str, Any]) -> Identifiers:
    values = {}
    for keyword in _UID_TAGS:
        value = str(found.get(keyword, "") or "").strip()
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
    """The four UIDs of an already parsed header; MissingIdentifier if one is missing."""
    return _identifiers({keyword: dataset.get(keyword) for keyword in _UID_TAGS})


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

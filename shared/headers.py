"""Reading what dcmdb needs from a DICOM header, and nothing more.

``Header`` walks every element of a data set as received (so one cut short in
transfer is refused) and keeps the raw values of the few top-level tags dcmdb
files by; text is decoded with the data set's own character set. It is several
times cheaper than a pydicom parse, and pixel data is never touched.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from shared.errors import MissingIdentifier, UnreadableObject

UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# What the sorter and the catalog need from each instance.
CATALOG_KEYWORDS = (
    *UID_KEYWORDS,
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "Modality",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "ProtocolName",
    "SeriesNumber",
    "InstanceNumber",
)
_TAGS = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in CATALOG_KEYWORDS}
_UID_TAGS = frozenset(_TAGS[k] for k in UID_KEYWORDS)
_CATALOG_TAGS = frozenset(_TAGS.values())
_TEXT_DELIMITERS = {0x5C, 0x3D, 0x5E}  # \ = ^ : character set switches reset there
_PART10_MAGIC = b"DICM"
_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1

# Uncompressed, deflated and the common compressed transfer syntaxes: what dcmdb accepts
# (from senders, and from a PACS by C-GET); the bytes are stored as received, so accepting
# a syntax costs nothing.
STORED_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
]


@dataclass(frozen=True)
class Identifiers:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str


class Header:
    """The top-level values of the tags dcmdb uses, read from a whole, valid data set."""

    def __init__(self, values: dict[int, bytes], meta: dict[int, bytes] | None = None) -> None:
        self._values = values
        self._meta = meta or {}
        charset = _ascii(values.get(_TAGS["SpecificCharacterSet"], b"")).split("\\")
        self._encodings = convert_encodings([c.strip() for c in charset])

    @classmethod
    def from_data_set(
        cls, dataset: bytes, transfer_syntax_uid: str, wanted: frozenset[int] = _CATALOG_TAGS
    ) -> Header:
        """Raises UnreadableObject when the bytes do not parse or stop short."""
        if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
            dataset = inflate(dataset)
        walker = _Walker(
            dataset,
            implicit=transfer_syntax_uid == ImplicitVRLittleEndian,
            little_endian=transfer_syntax_uid != ExplicitVRBigEndian,
            wanted=wanted,
        )
        walker.walk()
        return cls(walker.top_level)

    @classmethod
    def from_part10(cls, content: bytes) -> Header:
        """A DICOM file: preamble, file meta information, data set."""
        if content[128:132] != _PART10_MAGIC:
            raise UnreadableObject("not a DICOM file (no DICM prefix)")
        meta = _Walker(content[132:], implicit=False, little_endian=True, wanted=frozenset())
        end = 132 + meta.walk_meta()
        syntax = _ascii(meta.top_level.get(0x00020010, b""))
        if not syntax:
            raise UnreadableObject("the file meta information has no transfer syntax")
        header = cls.from_data_set(content[end:], syntax)
        header._meta = meta.top_level
        return header

    def text(self, keyword: str) -> str:
        """A tag's value as text, '' when absent or empty.

        NUL never belongs in DICOM text (it only pads UIDs) and PostgreSQL refuses text
        holding one, so a NUL within a value is dropped too.
        """
        raw = self._values.get(_TAGS[keyword], b"").rstrip(b"\x00 ")
        try:
            text = decode_bytes(raw, self._encodings, _TEXT_DELIMITERS)
        except Exception:
            text = raw.decode("latin-1")
        return text.replace("\x00", "").strip()

    def integer(self, keyword: str) -> int | None:
        """An IS value; None when absent, not a number, or outside IS's range (32-bit signed,
        as the catalog's integer columns), which only a broken or hostile sender exceeds."""
        try:
            value = int(self.text(keyword))
        except ValueError:
            return None
        return value if _IS_MIN <= value <= _IS_MAX else None

    def meta_text(self, tag: int) -> str:
        """A file meta information element as text (e.g. 0x00020010, the transfer syntax)."""
        return _ascii(self._meta.get(tag, b""))

    def identifiers(self) -> Identifiers:
        """The four UIDs; MissingIdentifier if one is absent or not a UID."""
        values = {}
        for keyword in UID_KEYWORDS:
            value = _ascii(self._values.get(_TAGS[keyword], b""))
            if not value:
                raise MissingIdentifier(f"{keyword} is missing")
            if len(value) > 64 or not value.isascii() or not value.isprintable():
                raise MissingIdentifier(f"{keyword} is not a valid UID")
            values[keyword] = value
        return Identifiers(*(values[keyword] for keyword in UID_KEYWORDS))


def read_identifiers(dataset: bytes, transfer_syntax_uid: str) -> Identifiers:
    """The four UIDs of a data set as received; the whole data set is checked on the way."""
    return Header.from_data_set(dataset, transfer_syntax_uid, _UID_TAGS).identifiers()


# Where one top-level element lies in a data set: (tag, VR as encoded or None when implicit,
# length as encoded, value start, value end). For an undefined length, the end is where the
# closing delimiter starts.
ElementPlace = tuple[int, bytes | None, int, int, int]


def element_places(dataset: bytes, *, implicit: bool, little_endian: bool) -> list[ElementPlace]:
    """Every top-level element of a data set, in order; the whole data set is checked.

    Raises UnreadableObject when the bytes do not parse or stop short.
    """
    walker = _Walker(dataset, implicit=implicit, little_endian=little_endian, wanted=frozenset())
    walker.places = []
    walker.walk()
    return walker.places


def meta_places(content: bytes) -> tuple[list[ElementPlace], int]:
    """The file meta elements of a DICOM file (offsets in `content`) and where its data set starts.

    Raises UnreadableObject when `content` is not a DICOM file or its meta is malformed.
    """
    if content[128:132] != _PART10_MAGIC:
        raise UnreadableObject("not a DICOM file (no DICM prefix)")
    walker = _Walker(content, implicit=False, little_endian=True, wanted=frozenset())
    walker.places = []
    return walker.places, walker.walk_meta(132)


def _ascii(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace").strip()


# A deflated data set may inflate to at most this many times its size, plus the allowance:
# far above what deflate makes of real objects, far below what a deflate bomb asks for
# (a megabyte of deflated zeros inflates to a gigabyte, all of it held in memory).
MAX_INFLATION = 50
INFLATION_ALLOWANCE = 64 * 1024 * 1024


def inflate(dataset: bytes) -> bytes:
    limit = len(dataset) * MAX_INFLATION + INFLATION_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(dataset, limit)
    except zlib.error as exc:
        raise UnreadableObject(f"deflated data set does not inflate: {exc}") from exc
    if inflater.unconsumed_tail:
        raise UnreadableObject(
            f"deflated data set inflates to more than {limit} bytes, "
            f"{MAX_INFLATION} times its size and {INFLATION_ALLOWANCE} more"
        )
    if not inflater.eof:
        raise UnreadableObject("deflated data set is cut short")
    return inflated


_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_MAX_DEPTH = 32


class _TooDeep(UnreadableObject):
    """Sequences nested deeper than any real object nests them."""


class _Walker:
    """Walks every element header of a data set to its end, without decoding values.

    pydicom reads a truncated data set without complaint, so this is what
    tells a complete object from one cut short in transfer. The top-level
    values of the ``wanted`` tags are kept on the way.

    Sequences are walked whatever their length form, so that no object nests
    them deeper than ``_MAX_DEPTH``: pydicom parses each level recursively, and
    a few kilobytes nested a thousand deep take it minutes and gigabytes.
    """

    def __init__(
        self, data: bytes, *, implicit: bool, little_endian: bool, wanted: frozenset[int]
    ) -> None:
        order = "<" if little_endian else ">"
        self.data, self.implicit = data, implicit
        self._explicit = struct.Struct(f"{order}HH2sH").unpack_from
        self._implicit = struct.Struct(f"{order}HHL").unpack_from
        self._u32 = struct.Struct(f"{order}L").unpack_from
        self._item_tag = struct.pack(f"{order}HH", 0xFFFE, 0xE000)
        self.top_level: dict[int, bytes] = {}
        self._wanted = wanted
        self.places: list[ElementPlace] | None = None  # recorded when a list

    def walk(self) -> None:
        if self.elements(0, len(self.data), depth=0, until=None) != len(self.data):
            raise UnreadableObject("data set ends inside an element")

    def walk_meta(self, offset: int = 0) -> int:
        """Walk the group 0002 elements from `offset`; keep them all; return where they end."""
        while offset + 8 <= len(self.data):
            tag, vr, length, value = self.header(offset)
            if tag >> 16 != 0x0002:
                return offset
            if length == _UNDEFINED or value + length > len(self.data):
                raise UnreadableObject("file meta information is malformed")
            self.top_level[tag] = self.data[value : value + length]
            if self.places is not None:
                self.places.append((tag, vr, length, value, value + length))
            offset = value + length
        raise UnreadableObject("file ends inside its meta information")

    def header(self, offset: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR, value length, value offset) of the element at ``offset``."""
        data = self.data
        if offset + 8 > len(data):
            raise UnreadableObject("data set ends inside an element header")
        if self.implicit:
            group, element, length = self._implicit(data, offset)
            return group << 16 | element, None, length, offset + 8
        group, element, vr, length = self._explicit(data, offset)
        if group == 0xFFFE:  # items and delimiters have no VR in any encoding
            return group << 16 | element, None, self._u32(data, offset + 4)[0], offset + 8
        if vr in _LONG_VRS:
            if offset + 12 > len(data):
                raise UnreadableObject("data set ends inside an element header")
            return group << 16 | element, vr, self._u32(data, offset + 8)[0], offset + 12
        return group << 16 | element, vr, length, offset + 8

    def elements(self, offset: int, end: int, depth: int, until: int | None) -> int:
        """Walk elements from ``offset``; stop at ``end`` or after the ``until`` delimiter."""
        if depth > _MAX_DEPTH:
            raise _TooDeep("sequences nested too deeply")
        while offset < end:
            tag, vr, length, value = self.header(offset)
            if tag == until:
                return value
            if length != _UNDEFINED:
                offset = value + length
                if offset > end:
                    raise UnreadableObject("data set ends inside an element")
                if depth == 0:
                    if tag in self._wanted:
                        self.top_level[tag] = self.data[value:offset]
                    if self.places is not None:
                        self.places.append((tag, vr, length, value, offset))
                if vr == b"SQ":
                    self.items(value, offset, depth + 1, delimited=False)
                elif vr is None or vr == b"UN":
                    self._perhaps_items(value, offset, depth + 1, vr)
                continue
            if vr not in (None, b"SQ", b"UN", b"OB", b"OW"):
                raise UnreadableObject("undefined length on an element that cannot have one")
            fragments = vr in (b"OB", b"OW") or tag == _PIXEL_DATA
            walker = _Walker.implicit_le(self.data) if vr == b"UN" else self
            offset = walker.items(value, end, depth + 1, fragments=fragments)
            if depth == 0 and self.places is not None:
                self.places.append((tag, vr, length, value, offset - 8))
        if until is not None:
            raise UnreadableObject("sequence or item not terminated")
        return offset

    def items(
        self, offset: int, end: int, depth: int, *, delimited: bool = True, fragments: bool = False
    ) -> int:
        """Walk the items of a sequence to its delimiter, or to `end` when not `delimited`.

        The items of encapsulated pixel data (`fragments`) are compressed pixels, not walked.
        """
        while delimited or offset < end:
            tag, _vr, length, value = self.header(offset)
            if delimited and tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise UnreadableObject("expected an item in a sequence")
            if length == _UNDEFINED:
                offset = self.elements(value, end, depth, until=_ITEM_END)
                continue
            offset = value + length
            if offset > end:
                raise UnreadableObject("data set ends inside a sequence item")
            if not fragments:
                self.elements(value, offset, depth, until=None)
        return offset

    def _perhaps_items(self, offset: int, end: int, depth: int, vr: bytes | None) -> None:
        """A value of implicit VR, or of VR UN (whose sequences are implicit VR little endian),
        that may hold a sequence: walked as one when it starts like one, for its depth.
        One that does not parse as items is opaque bytes; pydicom reads it or not."""
        walker = _Walker.implicit_le(self.data) if vr == b"UN" else self
        if end - offset < 8 or self.data[offset : offset + 4] != walker._item_tag:
            return
        try:
            walker.items(offset, end, depth, delimited=False)
        except _TooDeep:
            raise
        except UnreadableObject:
            pass

    @classmethod
    def implicit_le(cls, data: bytes) -> _Walker:
        return cls(data, implicit=True, little_endian=True, wanted=frozenset())

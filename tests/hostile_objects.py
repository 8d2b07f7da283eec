"""DICOM data sets encoded by hand, so that they can be wrong in exactly one way.

pydicom refuses to write most of what a hostile sender can send (a UID of a megabyte,
a sequence five thousand deep, a length that runs past the end), so the fuzz tests build
their objects from these few encoders, and ``HOSTILE`` lists the objects every service
must survive: each with the status the receiver answers and why it is refused.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.headers import ElementPlace
from shared.incoming import PREAMBLE, FileMeta
from tests.mutations import LengthField

CANNOT_PARSE, MISSING_UID = 0xC210, 0xC211
UNDEFINED = 0xFFFFFFFF
# VRs with a 4-byte length in explicit VR
LONG_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
REFERENCED_IMAGE_SEQUENCE = 0x00081140  # an SQ in the dictionary: pydicom reads it as one
CONTENT_SEQUENCE = 0x0040A730


@dataclass(frozen=True)
class Encoding:
    syntax: str
    implicit: bool
    little_endian: bool

    @property
    def order(self) -> str:
        return "<" if self.little_endian else ">"


EXPLICIT_LE = Encoding(ExplicitVRLittleEndian, implicit=False, little_endian=True)
IMPLICIT_LE = Encoding(ImplicitVRLittleEndian, implicit=True, little_endian=True)
EXPLICIT_BE = Encoding(ExplicitVRBigEndian, implicit=False, little_endian=False)
ENCODINGS = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)


def element(
    tag: int, vr: str, value: bytes, enc: Encoding = EXPLICIT_LE, length: int | None = None
) -> bytes:
    """One element; `length` overrides the length field (the value stays as given)."""
    size = len(value) if length is None else length
    group, number = tag >> 16, tag & 0xFFFF
    if enc.implicit:
        return struct.pack(f"{enc.order}HHL", group, number, size) + value
    if vr in LONG_VRS:
        return struct.pack(f"{enc.order}HH2sHL", group, number, vr.encode(), 0, size) + value
    return struct.pack(f"{enc.order}HH2sH", group, number, vr.encode(), size) + value


def item(content: bytes, enc: Encoding = EXPLICIT_LE, *, defined: bool = True) -> bytes:
    if defined:
        return struct.pack(f"{enc.order}HHL", 0xFFFE, 0xE000, len(content)) + content
    end = struct.pack(f"{enc.order}HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack(f"{enc.order}HHL", 0xFFFE, 0xE000, UNDEFINED) + content + end


def sequence(
    tag: int, items: Iterable[bytes], enc: Encoding = EXPLICIT_LE, *, defined: bool = True
) -> bytes:
    """A sequence of already encoded items, of defined or undefined length."""
    content = b"".join(items)
    if defined:
        return element(tag, "SQ", content, enc)
    end = struct.pack(f"{enc.order}HHL", 0xFFFE, 0xE0DD, 0)
    return element(tag, "SQ", content + end, enc, length=UNDEFINED)


def nested(depth: int, enc: Encoding = EXPLICIT_LE, *, defined: bool = True) -> bytes:
    """A Referenced Image Sequence in a Referenced Image Sequence, `depth` deep."""
    inner = text(0x00100020, "LO", "ID", enc)
    for _ in range(depth):
        inner = sequence(REFERENCED_IMAGE_SEQUENCE, [item(inner, enc, defined=defined)], enc,
                         defined=defined)  # fmt: skip
    return inner


def length_fields(places: Sequence[ElementPlace], little_endian: bool) -> list[LengthField]:
    """Where the length of each element lies (offsets as in `places`), for the mutations."""
    order: Literal["little", "big"] = "little" if little_endian else "big"
    fields = []
    for _tag, vr, _length, start, _end in places:
        if vr is not None and vr.decode() not in LONG_VRS:
            fields.append(LengthField(start - 2, 2, order))
        else:
            fields.append(LengthField(start - 4, 4, order))
    return fields


def pad(raw: bytes, padding: bytes = b" ") -> bytes:
    return raw + padding if len(raw) % 2 else raw


def text(tag: int, vr: str, value: str, enc: Encoding = EXPLICIT_LE) -> bytes:
    return element(tag, vr, pad(value.encode("latin-1")), enc)


def uid(tag: int, value: str, enc: Encoding = EXPLICIT_LE) -> bytes:
    return element(tag, "UI", pad(value.encode("ascii"), b"\0"), enc)


SOP_CLASS, SOP_INSTANCE, STUDY, SERIES = 0x00080016, 0x00080018, 0x0020000D, 0x0020000E


def identifying(
    enc: Encoding = EXPLICIT_LE,
    *,
    instance: str = "1.2.826.0.1.3680043.8.498.1",
    skip: int | None = None,
    replace: dict[int, bytes] | None = None,
    middle: bytes = b"",
) -> bytes:
    """A small data set with the four UIDs dcmdb files by, in tag order; `skip` leaves one
    out, `replace` puts other encoded bytes in its place, `middle` goes after the instance."""
    values = {
        SOP_CLASS: uid(SOP_CLASS, MR_IMAGE_STORAGE, enc),
        SOP_INSTANCE: uid(SOP_INSTANCE, instance, enc),
        STUDY: uid(STUDY, "1.2.826.0.1.3680043.8.498.2", enc),
        SERIES: uid(SERIES, "1.2.826.0.1.3680043.8.498.3", enc),
    }
    values.update(replace or {})
    parts = [text(0x00080060, "CS", "MR", enc)]
    for tag in (SOP_CLASS, SOP_INSTANCE):
        if tag != skip:
            parts.insert(-1, values[tag])
    parts.append(text(0x00100020, "LO", "FUZZ", enc) + middle)
    parts += [values[tag] for tag in (STUDY, SERIES) if tag != skip]
    return b"".join(parts)


@dataclass(frozen=True)
class Hostile:
    """A data set the receiver must refuse with `status` and keep in quarantine."""

    name: str
    data_set: bytes
    syntax: str
    status: int


def _hostile_objects() -> list[Hostile]:
    whole = identifying()
    short = element(0x00100010, "PN", b"A" * 8)
    objects = [
        # truncated: inside a value, inside a header, one byte short
        Hostile("truncated-half", whole[: len(whole) // 2], ExplicitVRLittleEndian, CANNOT_PARSE),
        Hostile("truncated-header", whole[: -len(whole) + 5], ExplicitVRLittleEndian, CANNOT_PARSE),
        Hostile("truncated-last-byte", whole[:-1], ExplicitVRLittleEndian, CANNOT_PARSE),
        Hostile("empty", b"", ExplicitVRLittleEndian, MISSING_UID),
        # wrong VRs
        Hostile(
            "uid-as-binary",
            identifying(replace={SOP_INSTANCE: element(SOP_INSTANCE, "OB", b"\x01\x02\xff\xfe")}),
            ExplicitVRLittleEndian,
            MISSING_UID,
        ),
        Hostile(
            "uid-as-unsigned-short",
            identifying(replace={STUDY: element(STUDY, "US", b"\x01\x00")}),
            ExplicitVRLittleEndian,
            MISSING_UID,
        ),
        Hostile(
            "sequence-of-text",
            identifying(middle=element(REFERENCED_IMAGE_SEQUENCE, "SQ", b"not an item at all")),
            ExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        Hostile(
            "long-vr-as-short",  # OB's header with the VR of a short one: lengths misread
            identifying(middle=element(0x00091010, "OB", b"\0" * 6).replace(b"OB", b"LO", 1)),
            ExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        Hostile(
            "explicit-sent-as-implicit",
            identifying(middle=short),
            ImplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        # deeply nested sequences, of every length form and encoding
        *[
            Hostile(
                f"nested-{enc_name}-{'defined' if defined else 'undefined'}",
                identifying(enc, middle=nested(5000, enc, defined=defined)),
                enc.syntax,
                CANNOT_PARSE,
            )  # fmt: skip
            for enc_name, enc in (("explicit", EXPLICIT_LE), ("implicit", IMPLICIT_LE))
            for defined in (True, False)
        ],
        Hostile(
            "nested-inside-un",  # an unknown VR hides a sequence, encoded implicitly
            identifying(
                middle=element(0x00091010, "UN", item(nested(5000, IMPLICIT_LE), IMPLICIT_LE))
            ),
            ExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        # missing UIDs
        *[
            Hostile(f"missing-{name}", identifying(skip=tag), ExplicitVRLittleEndian, MISSING_UID)
            for name, tag in (
                ("sop-class", SOP_CLASS),
                ("sop-instance", SOP_INSTANCE),
                ("study", STUDY),
                ("series", SERIES),
            )
        ],
        Hostile(
            "empty-series-uid",
            identifying(replace={SERIES: element(SERIES, "UI", b"")}),
            ExplicitVRLittleEndian,
            MISSING_UID,
        ),
        # huge values
        Hostile(
            "uid-of-a-megabyte",
            identifying(IMPLICIT_LE, instance="1." + "2" * (1 << 20)),
            ImplicitVRLittleEndian,
            MISSING_UID,
        ),
        Hostile(
            "length-of-four-gigabytes",
            identifying(middle=element(0x00081030, "UT", b"x" * 16, length=0xFFFFFFF0)),
            ExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        Hostile(
            "undefined-length-text",
            identifying(middle=element(0x00081030, "UT", b"x" * 16, length=UNDEFINED)),
            ExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        Hostile(
            "deflated-garbage",
            b"\x78\x9c this is not deflate",
            DeflatedExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        Hostile(  # 128 MiB of text deflated to about 128 KiB
            "deflate-bomb",
            _deflate(identifying(middle=element(0x00081030, "UT", b"x" * (128 << 20)))),
            DeflatedExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
        Hostile(
            "deflated-cut-short",
            _deflate(whole)[:-4],
            DeflatedExplicitVRLittleEndian,
            CANNOT_PARSE,
        ),
    ]
    return objects


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


HOSTILE = _hostile_objects()


@dataclass(frozen=True)
class Odd:
    """A data set that is strange but filed by its UIDs: the receiver accepts it, and
    what comes after must file it safely (or quarantine it), never crash on it."""

    name: str
    data_set: bytes
    syntax: str = ExplicitVRLittleEndian


def filed_by(study: str, series: str, instance: str, *elements: bytes) -> bytes:
    """A data set with these UIDs and `elements` (encoded, explicit VR LE), in tag order."""
    ordered = sorted(
        [
            uid(SOP_CLASS, MR_IMAGE_STORAGE),
            uid(SOP_INSTANCE, instance),
            uid(STUDY, study),
            uid(SERIES, series),
            *elements,
        ],
        key=lambda raw: struct.unpack_from("<HH", raw),
    )
    return b"".join(ordered)


def part10(data_set: bytes, syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A Part 10 file around a data set, as the receiver writes it; its meta names a
    placeholder instance (what a hostile sender puts in the command set is up to it)."""
    meta = FileMeta(MR_IMAGE_STORAGE, "1.2.826.0.1.3680043.8.498.99", syntax, "HOSTILE")
    return PREAMBLE + meta.encode() + data_set


def _odd(name: str, number: int, *elements: bytes, **uids: str) -> Odd:
    """An object with its own UIDs (so each is filed apart) plus `elements`."""
    base = f"1.2.826.0.1.3680043.8.498.{number}"
    study, series = uids.get("study", f"{base}.1"), uids.get("series", f"{base}.2")
    return Odd(name, filed_by(study, series, uids.get("instance", f"{base}.3"), *elements))


def raw(tag: int, vr: str, value: bytes) -> bytes:
    return element(tag, vr, pad(value))


REFERRING_PHYSICIAN, PATIENT_NAME, PATIENT_ID = 0x00080090, 0x00100010, 0x00100020
STUDY_DATE, STUDY_DESCRIPTION, SERIES_DESCRIPTION = 0x00080020, 0x00081030, 0x0008103E
SERIES_NUMBER, INSTANCE_NUMBER, PROTOCOL, CHARSET = 0x00200011, 0x00200013, 0x00181030, 0x00080005

ODD = [
    _odd(
        "names-that-climb",
        2001,
        raw(REFERRING_PHYSICIAN, "PN", b"../../../etc"),
        raw(PATIENT_ID, "LO", b"..\\..\\CON"),
        raw(STUDY_DESCRIPTION, "LO", b"/etc/passwd"),
        raw(SERIES_DESCRIPTION, "LO", b".."),
        instance="../../../etc/passwd",
        series="..",
        study="/tmp",
    ),
    _odd(
        "nul-and-control-characters",
        2002,
        raw(REFERRING_PHYSICIAN, "PN", b"SMITH\x00^JOHN\x1b$B"),
        raw(PATIENT_NAME, "PN", b"DOE\x00^JANE"),
        raw(PATIENT_ID, "LO", b"P\x00\x01\x7f1"),
        raw(STUDY_DESCRIPTION, "LO", b"a\x00b\nc\rd\te"),
    ),
    _odd(
        "broken-character-set",
        2003,
        raw(CHARSET, "CS", b"ISO 2022 IR 87\\ISO_IR 192\\NOT A CHARSET"),
        raw(REFERRING_PHYSICIAN, "PN", b"\x1b$B\xff\xfe\x1b(B^\xc3\x28"),
        raw(PATIENT_NAME, "PN", b"\xff\xfe\xfd"),
        raw(STUDY_DESCRIPTION, "LO", b"\x1b%G\xed\xa0\x80"),
    ),
    _odd(
        "huge-text",
        2004,
        # too long for their VRs' 2-byte lengths: sent with a long VR instead
        raw(REFERRING_PHYSICIAN, "UC", b"DR^" + b"X" * 100_000),
        raw(PATIENT_ID, "UC", b"P" * 100_000),
        raw(STUDY_DESCRIPTION, "UT", b"Brain " * 200_000),
        raw(SERIES_DESCRIPTION, "UC", b"\xe9" * 100_000),
    ),
    _odd(
        "numbers-out-of-range",
        2005,
        raw(STUDY_DATE, "DA", b"99999999"),
        raw(SERIES_NUMBER, "IS", b"99999999999999999999999"),
        raw(INSTANCE_NUMBER, "IS", b"-1e400"),
    ),
    _odd(
        "windows-reserved-names",
        2006,
        raw(REFERRING_PHYSICIAN, "PN", b"CON"),
        raw(PATIENT_ID, "LO", b"NUL.txt"),
        raw(STUDY_DESCRIPTION, "LO", b"COM1"),
        raw(SERIES_DESCRIPTION, "LO", b"LPT9."),
        raw(PROTOCOL, "LO", b"AUX"),
    ),
    _odd(
        "nested-as-deep-as-allowed",
        2007,
        nested(30, defined=True),
    ),
]

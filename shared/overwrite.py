"""Whether a copy of an instance replaces the copy dcmdb has filed: ``DCMDB_OVERWRITE``.

A sender may send a SOP Instance UID dcmdb holds already: the same bytes again (a retry, a
PACS pushing twice), a correction, or a broken copy (cut short, without its pixel data).
One decision, taken by the receiver and STOW-RS when the copy arrives (so that the sender is
told) and again by the sorter when it files it (the final word, whatever the order in which
several sorters meet the copies):

- the same data set again: nothing to do, whatever the policy;
- ``never``: the filed copy stays;
- ``better`` (the default): the new copy replaces the filed one only when it is of the same
  SOP class, has pixel data wherever the filed one has it (and all of it, as far as its
  rows, columns, frames and bits tell), and the same rows, columns and number of frames;
- ``always``: any readable copy replaces the filed one.

A copy that replaces keeps the one it replaced under ``history/`` (`history_path`); one that
does not goes to ``quarantine/`` with the reason, and its sender gets a warning
(`shared.dimse_status.COPY_NOT_FILED`).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.headers import element_places, inflate, meta_places

HISTORY = "history"  # in the data directory: replaced copies, by the path they were filed at

_NATIVE = frozenset(
    (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)
)  # fmt: skip
_PIXEL_TAGS = frozenset((0x7FE00008, 0x7FE00009, 0x7FE00010))  # float, double, plain
_SOP_CLASS = 0x00080016
_TRANSFER_SYNTAX = 0x00020010
_SAMPLES, _ROWS, _COLUMNS, _FRAMES, _BITS = (
    0x00280002, 0x00280010, 0x00280011, 0x00280008, 0x00280100,
)  # fmt: skip


class OverwritePolicy(enum.StrEnum):
    NEVER = "never"
    BETTER = "better"
    ALWAYS = "always"


class Pixels(enum.StrEnum):
    NONE = "none"
    WHOLE = "whole"
    SHORT = "short"  # fewer bytes than its rows, columns, frames and bits ask for


class Verdict(enum.StrEnum):
    IDENTICAL = "identical"
    REPLACE = "replace"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class Copy:
    """What the decision reads from one copy of an instance."""

    sop_class_uid: str
    rows: int | None
    columns: int | None
    frames: int
    pixels: Pixels
    digest: str  # of the data set alone: the file meta differs from one sender to another

    @classmethod
    def of_file(cls, content: bytes) -> Copy:
        """A PS3.10 file; UnreadableObject when it does not parse to its end."""
        places, start = meta_places(content)
        found = {tag: content[begin:end] for tag, _, _, begin, end in places}
        syntax = found.get(_TRANSFER_SYNTAX, b"").rstrip(b"\x00 ").decode("ascii", "replace")
        return cls.of_data_set(content[start:], syntax)

    @classmethod
    def of_data_set(cls, dataset: bytes, transfer_syntax_uid: str) -> Copy:
        digest = hashlib.sha256(dataset).hexdigest()
        if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
            dataset, transfer_syntax_uid = inflate(dataset), ExplicitVRLittleEndian
        little = transfer_syntax_uid != ExplicitVRBigEndian
        places = element_places(
            dataset, implicit=transfer_syntax_uid == ImplicitVRLittleEndian, little_endian=little
        )
        values = {tag: (length, dataset[begin:end]) for tag, _, length, begin, end in places}
        unsigned = _Unsigned(values, little)
        frames = _integer_string(values.get(_FRAMES, (0, b""))[1]) or 1
        rows, columns = unsigned.get(_ROWS), unsigned.get(_COLUMNS)
        pixels = Pixels.NONE
        for tag in _PIXEL_TAGS & values.keys():
            length, value = values[tag]
            if transfer_syntax_uid not in _NATIVE:  # encapsulated: its frames are not counted
                pixels = Pixels.WHOLE if len(value) > 8 else Pixels.SHORT
                continue
            needed = _native_length(rows, columns, frames, unsigned)
            pixels = Pixels.WHOLE if value and len(value) >= needed else Pixels.SHORT
        sop_class = values.get(_SOP_CLASS, (0, b""))[1].rstrip(b"\x00 ").decode("ascii", "replace")
        return cls(sop_class, rows, columns, frames, pixels, digest)

    def shape(self) -> str:
        """Rows x columns x frames."""
        return f"{self.rows}x{self.columns}x{self.frames}"


def decide(policy: OverwritePolicy, filed: Copy | None, arriving: Copy) -> Decision:
    """Whether ``arriving`` replaces ``filed`` (None: the filed copy cannot be read)."""
    if filed is not None and filed.digest == arriving.digest:
        return Decision(Verdict.IDENTICAL, "the same data set as the filed copy")
    if policy is OverwritePolicy.NEVER:
        return Decision(Verdict.REFUSE, "a copy is filed, and DCMDB_OVERWRITE=never")
    if policy is OverwritePolicy.ALWAYS:
        return Decision(Verdict.REPLACE, "DCMDB_OVERWRITE=always")
    if filed is None:
        return Decision(Verdict.REPLACE, "the filed copy cannot be read")
    refusal = _worse(filed, arriving)
    if refusal:
        return Decision(Verdict.REFUSE, refusal)
    return Decision(Verdict.REPLACE, "a whole copy of the same SOP class and shape")


def _worse(filed: Copy, arriving: Copy) -> str:
    """Why ``arriving`` is no copy to replace ``filed`` with under ``better``; '' if it is."""
    if arriving.sop_class_uid != filed.sop_class_uid:
        return "another SOP class than the filed copy's"
    if filed.pixels is not Pixels.NONE and arriving.pixels is Pixels.NONE:
        return "no pixel data, where the filed copy has it"
    if arriving.pixels is Pixels.SHORT and filed.pixels is Pixels.WHOLE:
        return "pixel data cut short; the filed copy's is whole"
    if (arriving.rows, arriving.columns, arriving.frames) != (
        filed.rows,
        filed.columns,
        filed.frames,
    ):
        return f"shape {arriving.shape()}, the filed copy's {filed.shape()}"
    return ""


def history_path(archive_path: str, sha256: str) -> PurePosixPath:
    """Where a filed copy goes once replaced, relative to ``history/``: beside where its
    successors are filed, named by its content (so that doing it again finds it there)."""
    path = PurePosixPath(archive_path)
    return path.with_name(f"{path.stem}.{sha256[:16]}{path.suffix}")


class _Unsigned:
    """The US values of a data set's top-level elements."""

    def __init__(self, values: dict[int, tuple[int, bytes]], little_endian: bool) -> None:
        self._values = values
        self._format = "<H" if little_endian else ">H"

    def get(self, tag: int) -> int | None:
        value = self._values.get(tag, (0, b""))[1]
        return struct.unpack_from(self._format, value)[0] if len(value) >= 2 else None


def _integer_string(value: bytes) -> int | None:
    try:
        return int(value.rstrip(b"\x00 ").decode("ascii").strip())
    except ValueError:
        return None


def _native_length(rows: int | None, columns: int | None, frames: int, unsigned: _Unsigned) -> int:
    """The bytes uncompressed pixel data needs (1 when the header says too little to tell)."""
    bits, samples = unsigned.get(_BITS), unsigned.get(_SAMPLES) or 1
    if not rows or not columns or not bits:
        return 1
    return (rows * columns * frames * samples * bits + 7) // 8

"""C-FIND response identifiers written by hand, in implicit or explicit VR little endian.

pydicom builds a validated DataElement per value and encodes through a file-like writer:
some 0.8 ms per answer of a dozen keys, more than all else a study-level C-FIND does per
match. Every answer of one query holds the same elements, so `IdentifierWriter` works out
each element's header once and then writes only values: the catalog's text and counts, and
elements read from an archived header. Text is written as it is (ASCII, or UTF-8, and then
the answer says ISO_IR 192), padded to even length as PS3.5 6.2 says: UIDs with NUL,
other text with a space. What is not text (binary VRs and sequences, from a header) goes
through pydicom's own element writer.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue

UTF8 = "ISO_IR 192"
SPECIFIC_CHARACTER_SET = 0x00080005
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)  # fmt: skip
# Explicit VR: these have a 4-byte length after two reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)  # fmt: skip
_TAG = struct.Struct("<HH")
_SHORT, _LONG = struct.Struct("<H"), struct.Struct("<L")
_LISTS = (list, tuple, MultiValue)


class IdentifierWriter:
    """Writes identifiers of the same elements (tag, VR) with different values."""

    def __init__(self, elements: Sequence[tuple[int, str]], explicit: bool) -> None:
        self._explicit = explicit
        order = sorted(range(len(elements)), key=lambda index: elements[index][0])
        self._plan = [(index, *self._head(*elements[index])) for index in order]
        self._charset_at = sum(1 for tag, _ in elements if tag < SPECIFIC_CHARACTER_SET)
        self._charset_head = self._head(SPECIFIC_CHARACTER_SET, "CS")

    def _head(self, tag: int, vr: str) -> tuple[int, str, bytes, struct.Struct, bytes]:
        prefix = _TAG.pack(tag >> 16, tag & 0xFFFF)
        length = _LONG
        if self._explicit:
            prefix += vr.encode("ascii")
            if vr in _LONG_VRS:
                prefix += b"\0\0"
            else:
                length = _SHORT
        return tag, vr, prefix, length, b"\0" if vr == "UI" else b" "

    def encode(self, values: Sequence[Any], *, charset_asked: bool = False) -> bytes:
        """The identifier of `values` (in the order of the writer's elements; None or ""
        for an empty one), with Specific Character Set ISO_IR 192 when some text is not
        ASCII (empty when it was asked and all is)."""
        out = bytearray()
        wide, charset_offset = False, 0
        for position, (index, tag, vr, prefix, length, pad) in enumerate(self._plan):
            if position == self._charset_at:
                charset_offset = len(out)
            value = values[index]
            if value is None or value == "":
                raw = b""
            elif vr in TEXT_VRS:
                text = value if type(value) is str else _text(value)
                raw = text.encode("utf-8")
                wide = wide or len(raw) != len(text)  # UTF-8 is longer than non-ASCII text
                if len(raw) & 1:
                    raw += pad
            else:
                out += self._pydicom_element(tag, vr, value)
                continue
            out += prefix
            out += length.pack(len(raw))
            out += raw
        if self._charset_at == len(self._plan):
            charset_offset = len(out)
        if wide or charset_asked:
            _, _, prefix, length, _ = self._charset_head
            value = b"ISO_IR 192" if wide else b""
            out[charset_offset:charset_offset] = prefix + length.pack(len(value)) + value
        return bytes(out)

    def _pydicom_element(self, tag: int, vr: str, value: Any) -> bytes:
        buffer = DicomBytesIO()
        buffer.is_little_endian = True
        buffer.is_implicit_VR = not self._explicit
        write_data_element(buffer, DataElement(tag, vr, value), encodings=["utf-8"])
        return buffer.getvalue()


def _text(value: Any) -> str:
    if isinstance(value, _LISTS):
        return "\\".join(str(item) for item in value)
    return str(value)

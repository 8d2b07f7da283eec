"""Frames of an instance's pixel data, as stored: uncompressed frames as little endian bytes,
compressed ones as their own bitstream (pydicom's `get_frame` finds them through the offset
tables).

Only the header and the asked frames are read: the pixel data is deferred, and each frame is
read from its place in the file. A deflated file, compressed whole, is read whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.encaps import get_frame
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian

PIXEL_DATA = 0x7FE00010
_DEFER = 64 * 1024  # values longer than this are read when used


class FrameError(ValueError):
    """Frames asked that the instance does not have; the message says what it has."""


class NoPixelData(LookupError):
    pass


class PixelFrames:
    """The frames of one instance file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.syntax = UID(read_file_meta_info(path).TransferSyntaxUID)
        ds = dcmread(path) if self.syntax.is_deflated else dcmread(path, defer_size=_DEFER)
        self._element = ds.get_item(PIXEL_DATA, keep_deferred=True)
        if self._element is None or "Rows" not in ds:
            raise NoPixelData("the instance has no pixel data")
        self.count = max(int(ds.get("NumberOfFrames") or 1), 1)
        self._bits = int(ds.get("BitsAllocated") or 8)
        self._frame_bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
        self._frame_bits *= self._bits
        offsets = ds.get("ExtendedOffsetTable"), ds.get("ExtendedOffsetTableLengths")
        self._extended = offsets if None not in offsets else None

    def check(self, numbers: Sequence[int]) -> None:
        for number in numbers:
            if not 1 <= number <= self.count:
                frames = "1 frame" if self.count == 1 else f"frames 1 to {self.count}"
                raise FrameError(f"there is no frame {number}: the instance has {frames}")

    def frames(self, numbers: Sequence[int]) -> Iterator[bytes]:
        """The bytes of each frame of `numbers` (1-based), in that order."""
        self.check(numbers)
        with self._value() as source:
            start = source.tell()
            for number in numbers:
                source.seek(start)
                if self.syntax.is_encapsulated:
                    yield get_frame(
                        source,
                        number - 1,
                        number_of_frames=self.count,
                        extended_offsets=self._extended,  # type: ignore[arg-type]
                    )
                else:
                    yield self._native(source, start, number - 1)

    def _native(self, source: BinaryIO, start: int, index: int) -> bytes:
        if self._frame_bits % 8:  # bit-packed frames that do not start on a byte
            first = index * self._frame_bits
            source.seek(start + first // 8)
            raw = source.read((first % 8 + self._frame_bits + 7) // 8)
            bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
            kept = bits[first % 8 : first % 8 + self._frame_bits]
            return bytes(np.packbits(kept, bitorder="little").tobytes())
        size = self._frame_bits // 8
        source.seek(start + index * size)
        frame = source.read(size)
        if self.syntax == ExplicitVRBigEndian and self._bits in (16, 32):
            width = self._bits // 8
            frame = np.frombuffer(frame, f">u{width}").astype(f"<u{width}").tobytes()
        return frame

    @contextmanager
    def _value(self) -> Iterator[BinaryIO]:
        """The pixel data's value to read from: in memory, or the file at its place."""
        value = self._element.value if self._element is not None else None
        if value is not None:
            yield BytesIO(value)
            return
        with open(self.path, "rb") as source:
            source.seek(self._element.value_tell)  # type: ignore[union-attr,attr-defined]
            yield source


def frame_numbers(text: str) -> list[int]:
    """``1``, ``1,3,5``: the frame numbers of a path."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise FrameError(f"{text[:80]!r} is not a list of frame numbers such as 1,2,3") from None
    if not numbers or len(numbers) > 10_000 or min(numbers) < 1:
        raise FrameError("frame numbers start at 1; give 1 to 10,000 of them")
    return numbers

"""A ZIP archive of files on disk (and a few small made ones), streamed as it is written.

`zipfile` writes the archive onto a write-only, non-seekable spool that the generator
empties after every chunk of file data, so the bytes go out as they are made and memory
stays at about one chunk, whatever the size of the files. Without seeking, `zipfile` puts
each entry's CRC and sizes in a data descriptor after its data, which every unzip reads.
Entries are stored uncompressed: DICOM pixel data compresses poorly and NIfTI files are
gzipped already.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from zipfile import ZIP64_LIMIT, ZIP_STORED, ZipFile, ZipInfo

log = logging.getLogger(__name__)

# The zip64 choice is made before an entry's data is written; a margin below zipfile's own
# limit keeps a file that grows while it is copied from failing the archive.
ZIP64_FROM = ZIP64_LIMIT // 2
_EARLIEST = (1980, 1, 1, 0, 0, 0)  # ZIP timestamps start in 1980 ...
_LATEST = (2107, 12, 31, 23, 59, 58)  # ... and end in 2107


@dataclass(frozen=True)
class Entry:
    """A file to put in the archive: its name there ('/'-separated, relative) and on disk,
    or its bytes when it is made for the archive (a BIDS session's participants row)."""

    name: str
    path: Path | bytes

    def __post_init__(self) -> None:
        parts = self.name.split("/")
        if (
            not self.name
            or self.name.startswith("/")
            or "\\" in self.name
            or "\x00" in self.name
            or any(part in ("", ".", "..") for part in parts)
            or (len(parts[0]) >= 2 and parts[0][1] == ":")  # a Windows drive
        ):
            raise ValueError(f"not a relative '/'-separated archive name: {self.name!r}")


class _Spool:
    """A write-only file that keeps what is written until it is drained."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._parts.append(data if isinstance(data, bytes) else bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def zip_stream(entries: Iterable[Entry], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of a ZIP archive of `entries`, in pieces of about `chunk_size` or less.

    A file that is gone by the time its turn comes is left out (and logged); the archive
    stays valid.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    spool = _Spool()
    with ZipFile(spool, mode="w", compression=ZIP_STORED, allowZip64=True) as archive:
        for number, entry in enumerate(entries, start=1):
            if isinstance(entry.path, bytes):
                made = ZipInfo(entry.name, time.localtime()[:6])
                made.external_attr = 0o100640 << 16  # a regular file, as the filed ones
                archive.writestr(made, entry.path, compress_type=ZIP_STORED)
                if data := spool.drain():
                    yield data
                continue
            try:
                source = open(entry.path, "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError:
                # The name may hold a physician or series name: the log says which entry only.
                log.warning("archive: file of entry %d is gone; left out of the archive", number)
                continue
            with source:
                stat = os.fstat(source.fileno())
                info = ZipInfo(entry.name, _date_time(stat.st_mtime))
                info.compress_type = ZIP_STORED
                info.file_size = stat.st_size
                info.external_attr = (stat.st_mode & 0xFFFF) << 16  # type and permissions
                with archive.open(info, "w", force_zip64=stat.st_size >= ZIP64_FROM) as member:
                    while chunk := source.read(chunk_size):
                        member.write(chunk)
                        yield spool.drain()
            if data := spool.drain():  # the data descriptor, and the header of an empty file
                yield data
    if data := spool.drain():  # the central directory
        yield data


def _date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """The local time of `mtime` as a ZIP timestamp, clamped to the years ZIP can hold."""
    local = time.localtime(mtime)[:6]
    return min(max(local, _EARLIEST), _LATEST)  # type: ignore[return-value]

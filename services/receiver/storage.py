"""Durable storage of received instances in ``incoming/`` and ``quarantine/``.

An instance is acknowledged only once it is on disk: written to a temporary
file, fsynced, renamed into ``incoming/`` and the directory fsynced. Its bytes
are the ones received; nothing is decoded or re-encoded. File names carry no
tag values at all: a nanosecond stamp and a random part.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

log = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"
SUFFIX = ".dcm"


class StorageFailed(OSError):
    """The instance could not be made durable (disk full, I/O error)."""


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    received_at: datetime


class IncomingStore:
    """Writes each received instance atomically into ``incoming/``."""

    def __init__(self, incoming: Path, quarantine: Path) -> None:
        self.incoming = incoming
        self.quarantine = quarantine
        self._partial = incoming / ".partial"
        for folder in (incoming, quarantine, self._partial):
            folder.mkdir(parents=True, exist_ok=True)
        self._incoming_fd = os.open(incoming, os.O_RDONLY | os.O_DIRECTORY)
        self._discard_partial_files()

    def close(self) -> None:
        os.close(self._incoming_fd)

    def store(self, file_meta: FileMetaDataset, dataset: bytes) -> StoredFile:
        """Make the instance durable in ``incoming/``; raise StorageFailed if it cannot be."""
        name = f"{time_stamp()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        partial = self._partial / name
        content = part10_bytes(file_meta, dataset)
        try:
            _write_synced(partial, content)
            os.rename(partial, self.incoming / name)
            os.fsync(self._incoming_fd)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise StorageFailed(exc.errno, f"cannot store instance: {exc.strerror}") from exc
        return StoredFile(self.incoming / name, len(content), received_time(name))

    def quarantine_object(
        self, file_meta: FileMetaDataset, dataset: bytes, reason: str, calling_ae: str
    ) -> Path | None:
        """Keep an unreadable object with the reason beside it, for an admin to look at."""
        stem = f"{time_stamp()}-{uuid.uuid4().hex[:12]}"
        target = self.quarantine / f"{stem}{SUFFIX}"
        note = {
            "reason": reason,
            "calling_ae": calling_ae,
            "received_at": datetime.now(UTC).isoformat(),
        }
        try:
            _write_synced(target, part10_bytes(file_meta, dataset))
            _write_synced(self.quarantine / f"{stem}.json", json.dumps(note).encode())
        except OSError as exc:
            log.error("cannot quarantine an unreadable object: %s", exc)
            target.unlink(missing_ok=True)
            return None
        return target

    def waiting_files(self) -> list[Path]:
        """Instances in ``incoming/``, oldest first (the names start with a time stamp)."""
        return sorted(self.incoming.glob(f"*{SUFFIX}"))

    def _discard_partial_files(self) -> None:
        # A partial file was never acknowledged: the sender saw a failure and resends.
        for partial in self._partial.iterdir():
            partial.unlink(missing_ok=True)


def part10_bytes(file_meta: FileMetaDataset, dataset: bytes) -> bytes:
    """The DICOM Part 10 file: preamble, file meta information, then the data set as received."""
    meta = DicomBytesIO()
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    return b"".join((PREAMBLE, meta.getvalue(), dataset))


def time_stamp() -> str:
    """Sorts by time of arrival, as text; ``received_time`` reads it back."""
    return f"{time.time_ns():020d}"


def received_time(name: str) -> datetime:
    """When the file of this name arrived: the time stamp its name starts with."""
    return datetime.fromtimestamp(int(name[:20]) / 1e9, UTC)


def _write_synced(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(content)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)

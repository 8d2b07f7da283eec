"""Durable storage of received instances in ``incoming/`` and ``quarantine/``.

What the receiver gets by C-STORE and the API by STOW-RS lands here, each process in an
incoming folder of its own. An instance is acknowledged only once it is on disk: written
to a temporary file in ``incoming/.partial/``, fsynced, then renamed into ``incoming/``.
Its bytes are the ones received (a C-STORE's data set behind file meta information made
from its command, a STOW-RS part as it came); nothing is decoded or re-encoded.

Creating a file costs more than writing and syncing one, so a thread keeps a
few empty spare files ready in ``.partial/`` and each instance is written into
one of them.

The directory is not fsynced after the rename (that second sync would double
the cost of every instance); instead, at start, any file in ``.partial/`` that
holds a complete DICOM object, so possibly acknowledged before a power cut
undid its rename, is moved on into ``incoming/``. One that is incomplete was
never acknowledged: the sender saw a failure and resends it.

An instance of a retrieval dcmdb asked for itself is the exception: the PACS keeps its
copy, so it is answered once written, unsynced, and noted in `shared.unsynced` until the
retrieval job syncs the filesystem once, at its end.

File names carry no tag values: a nanosecond stamp, a random part and the size.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from shared.disk import DiskUsage, Threshold, disk_usage
from shared.durable import write_synced
from shared.errors import ConfigurationError, StorageFailed, UnreadableObject
from shared.headers import Header
from shared.unsynced import UnsyncedFiles

log = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"
SUFFIX = ".dcm"


@dataclass(frozen=True)
class StoredFile:
    name: str  # in incoming/
    size: int
    received_at: datetime


@dataclass(frozen=True)
class FileMeta:
    """What the file meta information of a received instance says."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    source_ae: str

    def encode(self) -> bytes:
        """Group 0002 in explicit VR little endian, as PS3.10 7.1 lays it out."""
        elements = b"".join(
            (
                _element(0x0001, b"OB", b"\x00\x01"),
                _element(0x0002, b"UI", _uid(self.sop_class_uid)),
                _element(0x0003, b"UI", _uid(self.sop_instance_uid)),
                _element(0x0010, b"UI", _uid(self.transfer_syntax_uid)),
                _element(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
                _element(0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION)),
                _element(0x0016, b"AE", _text(self.source_ae)),
            )
        )
        return _element(0x0000, b"UL", struct.pack("<L", len(elements))) + elements


class IncomingStore:
    """Writes each received instance atomically into ``incoming/``."""

    def __init__(
        self, incoming: Path, quarantine: Path, setting: str = "DCMDB_INCOMING_FOLDER"
    ) -> None:
        """``setting`` names the folder in the error a second process on it meets."""
        self.incoming = incoming
        self.quarantine = quarantine
        self._partial = incoming / ".partial"
        # Plain strings on the hot path: pathlib costs more than the write itself.
        self._incoming_prefix = f"{incoming}{os.sep}"
        self._partial_prefix = f"{self._partial}{os.sep}"
        for folder in (incoming, quarantine, self._partial):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = _only_receiver_of(incoming, setting)
        self._recover_partial_files()
        self._spares = _SpareFiles(self._partial_prefix)
        self._unsynced = UnsyncedFiles(incoming.parent)

    def store(self, meta: FileMeta, dataset: bytes, *, deferred: bool = False) -> StoredFile:
        """Make the instance durable in ``incoming/``; raise StorageFailed if it cannot be.

        ``deferred``: only write it, and note it as not yet durable (`shared.unsynced`).
        """
        return self._land(PREAMBLE + meta.encode(), dataset, deferred=deferred)

    def store_file(self, content: bytes) -> StoredFile:
        """The same for a whole DICOM file (PS3.10), kept byte for byte as it came."""
        return self._land(content)

    def _land(self, *parts: bytes, deferred: bool = False) -> StoredFile:
        size = sum(len(part) for part in parts)
        stamp = time.time_ns()
        name = f"{stamp:020d}-{uuid.uuid4().hex[:12]}-{size}{SUFFIX}"
        partial, final = self._spares.take(), self._incoming_prefix + name
        try:
            write_synced(partial, *parts, create=False, sync=not deferred)
            os.rename(partial, final)
            if deferred:
                self._note_unsynced(final, name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise StorageFailed(exc.errno, f"cannot store instance: {exc.strerror}") from exc
        return StoredFile(name, size, datetime.fromtimestamp(stamp / 1e9, UTC))

    def _note_unsynced(self, final: str, name: str) -> None:
        """Noted for the job's sync, or synced now when it cannot be noted."""
        try:
            self._unsynced.mark(final, name)
        except OSError as exc:
            log.warning("cannot note an instance for its job's sync (%s): syncing it now", exc)
            write_synced(final, create=False)  # opens, writes nothing, fsyncs

    def quarantine_object(self, meta: FileMeta, dataset: bytes, reason: str) -> Path | None:
        """Keep an unreadable object with the reason beside it, for an admin to look at."""
        return self.quarantine_file(reason, meta.source_ae, PREAMBLE + meta.encode(), dataset)

    def quarantine_file(self, reason: str, source: str, *parts: bytes) -> Path | None:
        """Keep what was received as ``parts`` (a whole file, or its pieces) with the reason
        and its source (a calling AE title) beside it; None when it cannot be kept."""
        stem = f"{time_stamp()}-{uuid.uuid4().hex[:12]}"
        target = self.quarantine / f"{stem}{SUFFIX}"
        note = {
            "reason": reason,
            "calling_ae": source,
            "received_at": datetime.now(UTC).isoformat(),
        }
        try:
            write_synced(target, *parts)
            write_synced(self.quarantine / f"{stem}.json", json.dumps(note).encode())
        except OSError as exc:
            log.error("cannot quarantine an unreadable object: %s", exc)
            target.unlink(missing_ok=True)
            return None
        return target

    @staticmethod
    def waiting_in(incoming: Path) -> list[Path]:
        """Instances in ``incoming/``, oldest first (the names start with a time stamp)."""
        return sorted(incoming.glob(f"*{SUFFIX}"))

    def _recover_partial_files(self) -> None:
        for partial in self._partial.iterdir():
            content = partial.read_bytes()
            try:
                Header.from_part10(content).identifiers()
            except UnreadableObject:
                partial.unlink(missing_ok=True)  # empty or incomplete: never acknowledged
                continue
            name = partial.name  # a spare's content gets a name like any arrival's
            if name.startswith("spare-"):
                stamp = partial.stat().st_mtime_ns
                name = f"{stamp:020d}-{uuid.uuid4().hex[:12]}-{len(content)}{SUFFIX}"
            log.warning("recovering %s, complete but not yet in incoming/", partial.name)
            os.rename(partial, self.incoming / name)


class FolderTaken(ConfigurationError):
    """Another process holds this incoming folder."""


def _only_receiver_of(incoming: Path, setting: str) -> int:
    """Hold a lock on ``incoming`` for the life of the process, or refuse to start.

    A second receiver or API process on the same folder (on a host sharing the data
    directory) would take the first one's half-written files in ``.partial/`` for leftovers
    of a crash and remove them. POSIX locks hold across NFS and CephFS; the kernel drops
    this one with the process.
    """
    path = incoming / ".receiver.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise FolderTaken(
            f"another process uses {incoming}: give each receiver that shares the data "
            f"directory its own {setting}"
        ) from None
    return descriptor


def waiting_before(data_dir: Path, moment: int, others: Collection[Path]) -> int:
    """Instances received before `moment` (ns since the epoch) and not filed yet: still in an
    incoming folder of the data directory (every receiver's and the API's; not `others`,
    the archive and quarantine)."""
    waiting = 0
    for folder in data_dir.iterdir():
        if folder.name.startswith(".") or folder in others or not folder.is_dir():
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                name = entry.name
                if name.endswith(SUFFIX) and name[:20].isdigit() and int(name[:20]) < moment:
                    waiting += 1
    return waiting


def time_stamp() -> str:
    """Sorts by time of arrival, as text; ``received_time`` reads it back."""
    return f"{time.time_ns():020d}"


def received_time(name: str) -> datetime:
    """When the file of this name arrived: the time stamp its name starts with."""
    return datetime.fromtimestamp(int(name[:20]) / 1e9, UTC)


class SpaceFloor:
    """Whether the filesystem of ``incoming/`` has fallen below its minimum free space.

    Asked for every instance, so it measures at most once per ``interval`` seconds; says
    once in the log when it starts refusing and once when it accepts again.
    """

    def __init__(
        self,
        folder: Path,
        floor: Threshold,
        interval: float = 1.0,
        measure: Callable[[Path], DiskUsage] = disk_usage,
    ) -> None:
        self._folder = folder
        self._floor = floor
        self._interval = interval
        self._measure = measure
        self._lock = threading.Lock()
        self._next = 0.0
        self._below = False
        self._disabled = floor.amount == 0

    def reached(self) -> bool:
        if self._disabled or time.monotonic() < self._next:
            return self._below
        with self._lock:
            if time.monotonic() >= self._next:  # not measured meanwhile by another association
                self._next = time.monotonic() + self._interval
                self._update()
        return self._below

    def _update(self) -> None:
        try:
            usage = self._measure(self._folder)
        except OSError as exc:  # writing will tell
            log.debug("cannot measure free space: %s", exc)
            return
        below = usage.below(self._floor)
        if below and not self._below:
            log.error(
                "%d bytes free for %s, below DCMDB_MIN_FREE (%s): answering 0xA700 to every "
                "instance until space is back",
                usage.free,
                self._folder,
                self._floor,
            )
        elif self._below and not below:
            log.warning("%d bytes free for %s again: accepting instances", usage.free, self._folder)
        self._below = below


class _SpareFiles:
    """Empty files in ``.partial/``, made ahead of need by a thread of their own."""

    def __init__(self, prefix: str, count: int = 8) -> None:
        self._prefix = prefix
        self._ready: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wanted = threading.Semaphore(count)
        threading.Thread(target=self._keep_ready, name="spare-files", daemon=True).start()

    def take(self) -> str:
        try:
            spare = self._ready.get_nowait()
        except queue.Empty:
            return self._create()
        self._wanted.release()
        return spare

    def _keep_ready(self) -> None:
        while True:
            self._wanted.acquire()
            try:
                self._ready.put(self._create())
            except OSError as exc:  # a full disk: ``take`` creates, and fails, itself
                log.debug("cannot make a spare file: %s", exc)
                self._wanted.release()
                time.sleep(1.0)

    def _create(self) -> str:
        path = f"{self._prefix}spare-{uuid.uuid4().hex}"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
        return path


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHL", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    # Stored instances carry UIDs checked by ``Header.identifiers``; a quarantined one
    # may carry whatever its sender's command set said.
    raw = value.encode("ascii", "replace")[:64]
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw

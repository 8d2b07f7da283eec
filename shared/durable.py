"""Durable writes: bytes reach the disk before anyone is told they are there.

A file is written, then fsynced; a file that replaces another is written under a
temporary name in the same folder, fsynced, then renamed over it, so that a reader sees
the old version or the new one, never a part. A rename is durable once its folder is
fsynced (`fsync_directory`); callers that place several files sync each folder once,
after the last of them.

Error policy, the same for every step and every service: an ``OSError`` (opening,
writing, fsyncing the file, renaming, fsyncing the folder) propagates unchanged, errno and
all, and a temporary file is removed first. A write that cannot be made durable must not
be acknowledged: the receiver answers the sender "out of resources" (it raises
`shared.errors.StorageFailed`), the sorter leaves the instance in ``incoming/`` for the
event to come again (`TransientError`), the converter fails the conversion (and, when the
disk is full, tries it again later). Swallowing a failed folder sync would report a file
filed that a power cut can still take away.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# Writes a file's content into the open file it is given.
Writer = Callable[[BinaryIO], None]
_COPY_CHUNK = 1 << 20


def write_synced(path: Path | str, *parts: bytes, create: bool = True, sync: bool = True) -> None:
    """Write `parts` one after the other to `path` and fsync it (unless not `sync`: the
    caller makes it durable later, see `sync_filesystem`).

    A new file when `create` (it must not exist; readable by owner and group only, as
    received objects are), else an existing empty one. Plain descriptors and no copy of
    the parts: the receiver writes every instance through this.
    """
    flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if create else 0)
    fd = os.open(path, flags, 0o640)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def stream_synced(path: Path, writer: Writer) -> None:
    """Let `writer` fill the new file `path` (it must not exist; readable by owner and group
    only, 0640 whatever the umask), then fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    with open(fd, "wb") as handle:
        os.fchmod(fd, 0o640)
        writer(handle)
        handle.flush()
        os.fsync(fd)


def copy_synced(source: Path, target: Path) -> None:
    """Copy `source` into the new file `target` and fsync it."""
    with open(source, "rb") as reader:
        stream_synced(target, lambda handle: shutil.copyfileobj(reader, handle, _COPY_CHUNK))


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a new name of ``source``'s file, or a synced copy of it where the two
    are on different filesystems."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy_synced(source, target)


def replace_durably(path: Path, temporary: Path, content: bytes | Writer) -> None:
    """Replace `path` atomically by `content`, written and fsynced under `temporary` (a name
    in the same folder) first. The folder is not synced: see `fsync_directory`."""
    writer = (lambda handle: handle.write(content)) if isinstance(content, bytes) else content
    try:
        stream_synced(temporary, writer)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def fsync_directory(directory: Path | str) -> None:
    """Make the names created, renamed or removed in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path | str) -> None:
    """Make everything written to the filesystem holding `path` durable, by anyone: file
    contents, names created, renamed and removed (syncfs(2), one call however many files).

    Its errors are raised as ``OSError`` (since Linux 5.8 syncfs reports a writeback
    error met since the last call on this descriptor's filesystem)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _LIBC.syncfs(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"syncfs {path}: {os.strerror(number)}")
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)

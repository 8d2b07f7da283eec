"""The share: who may read the archive on disk.

Each lab folder of the archive (``<archive>/<physician folder>``) and everything under it
belongs to its lab's Unix group: the keys file's ``groups:`` entry for the folder, else
``dcmdb-<folder>`` (`shared.keys.lab_group`). Folders are 2750 (setgid, so that what is
made in them takes their group), files 0640: the services' user writes, the lab's group
reads, nobody else sees anything, whatever the umask. The archive root itself is 0755,
so that each lab reaches its own folder.

A group that does not exist here (creating groups is an admin's job) leaves a new lab
folder in the service's own group, still 2750: nobody else reads it, and a warning names
the group to create and ``dcmdb share``, which applies the groups and modes to a whole
archive afterwards (services/commands/share.py).

The group of a lab folder is decided once, when it is made; below it, each folder and file
takes the group of the folder it is made in. Giving a path a group needs root or
membership of that group: the services' user should be in every lab's group (a file is
copied rather than linked into a folder whose group it cannot give).
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared import keys
from shared.errors import ConfigurationError

log = logging.getLogger("dcmdb.share")

FILE_MODE = 0o640
FOLDER_MODE = 0o2750
ROOT_MODE = 0o755  # the archive root: every lab passes through it to its own folder
_CREATED = 0o750  # mkdir's mode; the setgid bit comes from the parent, or from chmod


@dataclass(frozen=True)
class LabGroup:
    """A lab folder's group: its name, and its id on this host (None: no such group)."""

    name: str
    gid: int | None


def lab_group(keys_file: Path, folder: str) -> LabGroup:
    """The group a lab folder belongs to, as the keys file says now. A keys file that cannot
    be read is a ConfigurationError."""
    name = keys.lab_group(keys.load(keys_file), folder)
    try:
        return LabGroup(name, grp.getgrnam(name).gr_gid)
    except KeyError:
        return LabGroup(name, None)


def make_archive_root(root: Path) -> None:
    """The archive root, made ROOT_MODE when missing (an existing one is left as it is)."""
    try:
        os.mkdir(root, ROOT_MODE)
    except FileExistsError:
        return
    except FileNotFoundError:
        root.parent.mkdir(parents=True, exist_ok=True)
        make_archive_root(root)
        return
    os.chmod(root, ROOT_MODE)


def make_folder(path: Path, make_parent: Callable[[Path], None] | None = None) -> None:
    """Make `path` and its missing parents (through `make_parent`, by default this), each
    2750 in its parent's group. An existing folder is left as it is (``dcmdb share`` mends
    old ones): one mkdir when it exists, as for every instance filed."""
    try:
        os.mkdir(path, _CREATED)
    except FileExistsError:
        return
    except FileNotFoundError:
        (make_parent or make_folder)(path.parent)
        make_folder(path, make_parent)
        return
    settle_folder(path, os.stat(path.parent).st_gid)


def settle_folder(path: Path, gid: int) -> bool:
    """Give a folder `gid` and mode 2750; False when the group cannot be given (the process
    is neither root nor in the group): the folder then keeps its group."""
    return _settle(path, gid, FOLDER_MODE)


def settle_file(path: Path) -> bool:
    """Give a file written into the archive mode 0640 and its folder's group; False when the
    group cannot be given, as for `settle_folder`."""
    return _settle(path, os.stat(path.parent).st_gid, FILE_MODE)


def apply(path: Path, gid: int | None, mode: int) -> bool:
    """Give `path` (not followed if a symlink) `gid` (None: keep its group) and `mode`;
    whether anything changed. An OSError propagates: PermissionError when this process may
    not give the group."""
    info = os.lstat(path)
    changed = False
    if gid is not None and info.st_gid != gid:
        os.chown(path, -1, gid, follow_symlinks=False)  # before chmod: it may clear mode bits
        info, changed = os.lstat(path), True
    # Only when needed: a chmod by a process outside a folder's group would drop its setgid.
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
        changed = True
    return changed


def _settle(path: Path, gid: int, mode: int) -> bool:
    try:
        apply(path, gid, mode)
    except PermissionError:
        apply(path, None, mode)
        return False
    return True


class LabFolders:
    """Makes folders in the archive; a new lab folder gets its lab's group.

    The keys file is read when a lab folder is made, never per instance. A lab folder is
    made complete under a temporary name and renamed into place, so that a concurrent
    sorter never files into a lab folder whose group is not given yet.
    """

    def __init__(self, root: Path, keys_file: Path) -> None:
        self.root = root
        self._keys_file = keys_file

    def make(self, folder: Path) -> None:
        """Make `folder` (inside the archive) and its missing parents."""
        if folder.parent == self.root:
            self._make_lab_folder(folder)
        else:
            make_folder(folder, self.make)

    def _make_lab_folder(self, lab: Path) -> None:
        if lab.is_dir():
            return
        temporary = self.root / f".{lab.name}.{uuid.uuid4().hex[:12]}.new"
        os.mkdir(temporary, _CREATED)
        try:
            problem = self._settle_lab_folder(temporary, lab.name)
            try:
                os.rename(temporary, lab)  # replaces nothing but an empty folder
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return  # another sorter made it first, as complete as this one
        finally:
            if temporary.exists():
                temporary.rmdir()
        if problem:
            log.warning("lab folder %s: %s", lab.name, problem)

    def _settle_lab_folder(self, folder: Path, name: str) -> str:
        """Give a new lab folder its group, or the service's own one; what went wrong."""
        try:
            group = lab_group(self._keys_file, name)
        except ConfigurationError as exc:
            settle_folder(folder, os.getegid())
            return f"{exc}; the folder keeps this service's group (mode 2750)"
        if group.gid is None:
            settle_folder(folder, os.getegid())
            return (
                f"the group {group.name} does not exist, so the folder keeps this service's "
                f"group (mode 2750: no one else reads it). Create the group (groupadd "
                f"{group.name}, or dcmdb share --create-groups as root), then run dcmdb share"
            )
        if not settle_folder(folder, group.gid):
            settle_folder(folder, os.getegid())
            return (
                f"this service's user may not give it the group {group.name} (it is not in "
                f"the group), so the folder keeps this service's group (mode 2750). Run "
                f"dcmdb share as root, and add the user to the group"
            )
        return ""

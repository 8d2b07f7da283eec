"""Who may see what: API keys, each with a name, a scope and the labs it sees, and the Unix
group of each lab's folder on the share, all kept in one keys file (YAML,
``DCMDB_KEYS_FILE``, default ``<data dir>/keys.yaml``).

The file holds a SHA-256 digest of each key, never the key: a key is 32 random bytes, so a
fast hash is as safe as a slow one and costs nothing per request. ``dcmdb keys`` edits the
file; a running API reads it again when it changes (`KeyRing`)::

    keys:
      - name: smith-lab
        scope: read
        labs: [SMITH_JOHN]
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        created: 2026-12-07T08:00:00Z
      - name: operator
        scope: admin
        labs: all
        sha256: ...
    groups:            # optional: the Unix group of a lab's folder, when not dcmdb-<folder>
      SMITH_JOHN: smithlab
    desktops:          # DICOM peers that query and retrieve (Horos, OsiriX, a second dcmdb)
      - ae_title: SMITHLAB_HOROS
        host: 10.0.4.17
        port: 11112
        labs: [SMITH_JOHN]

A desktop is one calling AE title at one host; it finds and retrieves its labs' studies, and
is a destination that may receive them (``dcmdb desktops`` edits them; a running receiver
reads the file again when it changes).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.durable import fsync_directory, replace_durably
from shared.errors import ConfigurationError
from shared.peers import AE_TITLE_PATTERN

log = logging.getLogger("dcmdb.keys")

KEY_PREFIX = "dcmdb_"
LAB_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # a physician folder's name
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"


class Scope(StrEnum):
    READ = "read"
    ADMIN = "admin"  # includes read


Lab = Annotated[str, Field(pattern=LAB_PATTERN)]


class KeyEntry(BaseModel):
    """One key as the file stores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    scope: Scope
    labs: Literal["all"] | tuple[Lab, ...] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: dt.datetime | None = None

    @model_validator(mode="after")
    def _admins_see_every_lab(self) -> Self:
        # An admin reads the audit trail and registers webhooks, for every lab: a key that
        # may do that sees every lab, or else it could reach another lab's studies that way.
        if self.scope is Scope.ADMIN and self.labs != "all":
            raise ValueError("an admin key sees every lab: labs must be all")
        return self


class DesktopEntry(BaseModel):
    """A lab's DICOM desktop (Horos, OsiriX, a script): what it may find and retrieve, and
    where a C-MOVE to its AE title sends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: str = Field(pattern=f"^{AE_TITLE_PATTERN}$")
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    labs: Literal["all"] | tuple[Lab, ...] = Field(min_length=1)
    created: dt.datetime | None = None

    @property
    def lab_set(self) -> frozenset[str] | None:
        """The labs it sees; None: every lab."""
        return None if self.labs == "all" else frozenset(self.labs)

    def sees(self, folder: str) -> bool:
        return self.labs == "all" or folder in self.labs


class KeysDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = []
    groups: dict[Lab, str] = {}
    desktops: list[DesktopEntry] = []

    def named(self, name: str) -> KeyEntry | None:
        return next((entry for entry in self.keys if entry.name == name), None)

    def desktop(self, ae_title: str) -> DesktopEntry | None:
        return next((entry for entry in self.desktops if entry.ae_title == ae_title), None)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a key's name and scope, and the labs it sees (None: all)."""

    name: str
    scope: Scope
    labs: frozenset[str] | None

    @property
    def is_admin(self) -> bool:
        return self.scope is Scope.ADMIN

    def sees(self, folder: str) -> bool:
        return self.labs is None or folder in self.labs


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def lab_group(document: KeysDocument, folder: str) -> str:
    """The Unix group that owns a lab's folder on the share."""
    return document.groups.get(folder, f"dcmdb-{folder}")


def caller_of(entry: KeyEntry) -> Caller:
    labs = None if entry.labs == "all" else frozenset(entry.labs)
    return Caller(entry.name, entry.scope, labs)


def load(path: Path) -> KeysDocument:
    """The keys file; no file is no keys. A file that cannot be read or is malformed is a
    configuration error naming the place, never showing a digest."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KeysDocument()
    except OSError as exc:
        raise ConfigurationError(f"the keys file {path} cannot be read: {exc.strerror}") from None
    return parse(text, str(path))


def parse(text: str, where: str) -> KeysDocument:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"the keys file {where} is not YAML: {exc}") from None
    try:
        document = KeysDocument.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_input=False)
        )
        raise ConfigurationError(f"the keys file {where} is malformed: {problems}") from None
    names = [entry.name for entry in document.keys]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"the keys file {where} names a key twice")
    titles = [entry.ae_title for entry in document.desktops]
    if len(set(titles)) != len(titles):
        raise ConfigurationError(f"the keys file {where} names a desktop's AE title twice")
    return document


@contextmanager
def editing(path: Path) -> Iterator[KeysDocument]:
    """Load the keys file for a change and write it back durably when the block ends; one
    editor at a time. The file is readable by its owner and group only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = load(path)
        yield document
        text = yaml.safe_dump(document.model_dump(mode="json", exclude_none=True), sort_keys=False)
        # 0640, as `stream_synced` makes every file: the services' group reads it.
        replace_durably(path, path.with_name(f".{path.name}.new"), text.encode())
        fsync_directory(path.parent)


class KeysFile:
    """The keys file as a running service sees it: read again whenever it changes (its
    inode, time or size). A file broken by an edit keeps what was read before, with an
    error in the log: a typo must not lock every lab out. Safe to share between threads."""

    def __init__(self, path: Path, *, tolerant: bool = False) -> None:
        """`tolerant`: a file malformed at start is logged and read as empty until it is
        mended, instead of refusing to start (the receiver: a typo in a desktop must not
        stop the scanners' C-STOREs)."""
        self._path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        try:
            self._document = load(path)
        except ConfigurationError as exc:
            if not tolerant:
                raise
            log.error("%s; no desktops until it is mended", exc)
            self._document = KeysDocument()

    @property
    def document(self) -> KeysDocument:
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._reload(stamp)
        return self._document

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _reload(self, stamp: tuple[int, int, int] | None) -> None:
        self._stamp = stamp  # once per change, not per request
        try:
            self._document = load(self._path)
        except ConfigurationError as exc:
            log.error("%s; what was read before stays in force", exc)
            return
        log.info(
            "keys file read again: %d keys, %d desktops",
            len(self._document.keys),
            len(self._document.desktops),
        )


class KeyRing:
    """The keys an API accepts: those of the keys file (`KeysFile`), and the keys of
    ``DCMDB_API_KEYS`` (which see every lab)."""

    def __init__(self, path: Path, fixed: Mapping[str, Scope]) -> None:
        self._file = KeysFile(path)
        self._fixed = {
            digest(key): Caller(f"DCMDB_API_KEYS #{number}", scope, None)
            for number, (key, scope) in enumerate(fixed.items(), start=1)
        }
        self._read: KeysDocument | None = None
        self._callers: dict[str, Caller] = {}

    @property
    def document(self) -> KeysDocument:
        return self._file.document

    @property
    def enabled(self) -> bool:
        return bool(self._current()) or bool(self._fixed)

    def caller(self, presented: str) -> Caller | None:
        """Whose key this is, None when unknown or revoked."""
        found = digest(presented)
        return self._current().get(found) or self._fixed.get(found)

    def holder(self, name: str, digest_prefix: str) -> Caller | None:
        """The caller of the key named `name` whose digest begins with `digest_prefix`, as a
        web session remembers it; None once that key is revoked or given to another key."""
        if len(digest_prefix) < 16:
            return None
        return next(
            (
                caller
                for found, caller in (*self._current().items(), *self._fixed.items())
                if caller.name == name and found.startswith(digest_prefix)
            ),
            None,
        )

    def _current(self) -> dict[str, Caller]:
        document = self._file.document
        if document is not self._read:
            self._callers = {entry.sha256: caller_of(entry) for entry in document.keys}
            self._read = document
        return self._callers

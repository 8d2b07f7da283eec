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
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, BinaryIO, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.durable import fsync_directory, replace_durably
from shared.errors import ConfigurationError

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


class KeysDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = []
    groups: dict[Lab, str] = {}

    def named(self, name: str) -> KeyEntry | None:
        return next((entry for entry in self.keys if entry.name == name), None)


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
        temporary = path.with_name(f".{path.name}.new")
        replace_durably(path, temporary, lambda handle: _owner_and_group_only(handle, text))
        fsync_directory(path.parent)


def _owner_and_group_only(handle: BinaryIO, text: str) -> None:
    os.fchmod(handle.fileno(), 0o640)
    handle.write(text.encode())


class KeyRing:
    """The keys an API accepts: the keys file, read again whenever it changes, and the keys
    of ``DCMDB_API_KEYS`` (which see every lab). A file broken by an edit keeps the keys
    read before, with an error in the log: a typo must not lock every lab out."""

    def __init__(self, path: Path, fixed: Mapping[str, Scope]) -> None:
        self._path = path
        self._fixed = {
            digest(key): Caller(f"DCMDB_API_KEYS #{number}", scope, None)
            for number, (key, scope) in enumerate(fixed.items(), start=1)
        }
        self._stamp: tuple[int, int, int] | None = None
        self._callers: dict[str, Caller] = {}
        self.document = load(path)
        self._adopt(self.document, self._stat())

    @property
    def enabled(self) -> bool:
        self._refresh()
        return bool(self._callers) or bool(self._fixed)

    def caller(self, presented: str) -> Caller | None:
        """Whose key this is, None when unknown or revoked."""
        self._refresh()
        found = digest(presented)
        return self._callers.get(found) or self._fixed.get(found)

    def holder(self, name: str, digest_prefix: str) -> Caller | None:
        """The caller of the key named `name` whose digest begins with `digest_prefix`, as a
        web session remembers it; None once that key is revoked or given to another key."""
        self._refresh()
        if len(digest_prefix) < 16:
            return None
        return next(
            (
                caller
                for found, caller in (*self._callers.items(), *self._fixed.items())
                if caller.name == name and found.startswith(digest_prefix)
            ),
            None,
        )

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _refresh(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        try:
            document = load(self._path)
        except ConfigurationError as exc:
            log.error("%s; the keys read before stay in force", exc)
            self._stamp = stamp  # once per change, not per request
            return
        self._adopt(document, stamp)
        log.info("keys file read again: %d keys", len(document.keys))

    def _adopt(self, document: KeysDocument, stamp: tuple[int, int, int] | None) -> None:
        self.document = document
        self._callers = {entry.sha256: caller_of(entry) for entry in document.keys}
        self._stamp = stamp

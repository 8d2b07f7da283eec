"""The filed copy of an arriving instance, looked up when it arrives (`shared.overwrite`).

The receiver (C-STORE) and the API (STOW-RS) ask before they store an instance whether dcmdb
has filed its SOP Instance UID already, and whether the new copy would replace it; one that
would not goes to ``quarantine/`` with the reason instead of ``incoming/``, and its sender is
told. The sorter decides again when it files (a copy filed meanwhile, by another receiver or
sorter, is judged there).

The lookup is one indexed query (some microseconds on SQLite, tens on PostgreSQL). When the
catalog cannot tell (no tables yet, say), the copy is taken as usual and the sorter judges
it; when it cannot be reached, it is asked again only some seconds later, so that a catalog
gone away does not slow every instance down.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, PoolProxiedConnection
from sqlalchemy.engine import make_url

from shared.catalog.database import create_catalog_engine
from shared.errors import UnreadableObject
from shared.incoming import FileMeta, IncomingStore
from shared.overwrite import (
    Copy,
    Decision,
    OverwritePolicy,
    Verdict,
    decide,
    history_path,
)
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

_QUIET_AFTER_FAILURE = 5.0  # seconds without lookups once the catalog could not be reached
_LOOK_UP = "SELECT path, sha256 FROM instances WHERE sop_instance_uid = :uid"


class FiledCopies:
    def __init__(
        self, catalog_url: str, archive: Path, history: Path, policy: OverwritePolicy
    ) -> None:
        self._url = catalog_url
        self._engine: Engine | None = None
        self._archive = archive
        self._history = history
        self.policy = policy
        self._quiet_until = 0.0
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[PoolProxiedConnection] = queue.SimpleQueue()
        self._query = ""

    @classmethod
    def of(cls, settings: CommonSettings) -> FiledCopies:
        return cls(
            settings.catalog_url,
            settings.archive_root,
            settings.history_dir,
            OverwritePolicy(settings.overwrite),
        )

    def judge(self, sop_instance_uid: str, arriving: Callable[[], Copy]) -> Decision | None:
        """The decision on a copy of an instance filed already; None when none is filed (or
        the catalog cannot tell now), or when any copy replaces (``always``)."""
        if self.policy is OverwritePolicy.ALWAYS:
            return None
        filed = self._filed(sop_instance_uid)
        if filed is None:
            return None
        path, sha256 = filed
        return decide(self.policy, read_filed_copy(self._archive, self._history, path, sha256),
                      arriving())  # fmt: skip

    def refuse_data_set(self, store: IncomingStore, meta: FileMeta, dataset: bytes) -> str | None:
        """A C-STORE's data set: kept in quarantine when it would not replace the filed copy;
        why, or None when it goes on into ``incoming/`` as usual."""
        decision = self.judge(
            meta.sop_instance_uid, lambda: Copy.of_data_set(dataset, meta.transfer_syntax_uid)
        )
        if decision is None or decision.verdict is not Verdict.REFUSE:
            return None
        kept = store.quarantine_object(meta, dataset, f"not filed: {decision.reason}")
        _log_refusal(meta.sop_instance_uid, meta.source_ae, kept, decision.reason)
        return decision.reason

    def refuse_file(
        self, store: IncomingStore, sop_instance_uid: str, content: bytes, source: str
    ) -> str | None:
        """The same for a whole PS3.10 file (STOW-RS)."""
        decision = self.judge(sop_instance_uid, lambda: Copy.of_file(content))
        if decision is None or decision.verdict is not Verdict.REFUSE:
            return None
        kept = store.quarantine_file(f"not filed: {decision.reason}", source, content)
        _log_refusal(sop_instance_uid, source, kept, decision.reason)
        return decision.reason

    def _filed(self, sop_instance_uid: str) -> tuple[str, str] | None:
        if time.monotonic() < self._quiet_until:
            return None
        try:
            return self._look_up(sop_instance_uid)
        except _Unreachable as exc:
            self._quiet_until = time.monotonic() + _QUIET_AFTER_FAILURE
            log.warning("cannot reach the catalog (%s); the sorter decides meanwhile", exc)
        except Exception as exc:  # any driver's error (no tables yet, say): asked again next time
            log.debug("cannot look up a filed copy (%s); the sorter decides", exc)
        return None

    def _look_up(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """One query on a connection of its own: the driver's, without the ORM or the
        pool's ping (each costs more than the query, on every instance received)."""
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            connection = self._connect()
        try:
            cursor = connection.cursor()
            cursor.execute(self._query, (sop_instance_uid,))
            row = cursor.fetchone()
            cursor.close()
        except Exception:
            if getattr(connection.driver_connection, "closed", False):
                connection.invalidate()  # lost: the next look-up connects anew
            else:
                self._idle.put(connection)  # a query that failed (no tables yet)
            raise
        self._idle.put(connection)
        return (row[0], row[1]) if row is not None else None

    def _connect(self) -> PoolProxiedConnection:
        with self._lock:
            if self._engine is None:
                # Connections are kept here, each used by one thread at a time: none is pooled.
                # A PostgreSQL that does not answer holds up an instance 2 s at the most.
                url = make_url(self._url)
                if url.get_backend_name() == "postgresql":
                    url = url.update_query_dict({"connect_timeout": "2"})
                self._engine = create_catalog_engine(
                    url.render_as_string(hide_password=False), pooled=False
                )
                style = self._engine.dialect.paramstyle
                self._query = _LOOK_UP.replace(":uid", "?" if style == "qmark" else "%s")
        try:
            connection = self._engine.raw_connection()
        except Exception as exc:
            raise _Unreachable(str(exc)) from exc
        driver = connection.driver_connection
        if driver is not None and hasattr(driver, "autocommit"):  # never idle in a transaction
            driver.autocommit = True
        return connection


class _Unreachable(Exception):
    """No connection to the catalog could be made."""


def _log_refusal(sop_instance_uid: str, source: str, kept: Path | None, reason: str) -> None:
    log.warning(
        "a copy of filed instance %s from %s does not replace it (DCMDB_OVERWRITE): %s; "
        "kept in quarantine as %s",
        sop_instance_uid,
        source,
        reason,
        kept.name if kept else "(not kept)",
    )


def read_filed_copy(archive: Path, history: Path, path: str, sha256: str) -> Copy | None:
    """The filed copy as the catalog records it (``path`` in the archive, its checksum):
    from the archive, or from ``history/`` when a filing cut short moved it there already;
    None when it is in neither place, or does not read."""
    for candidate in (archive / path, history / history_path(path, sha256)):
        try:
            content = candidate.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(content).hexdigest() != sha256:
            continue
        try:
            return Copy.of_file(content)
        except UnreadableObject:
            return None
    return None

"""The audit trail in the catalog (`AuditEvent`): written behind by a thread of the API
process (and of the receiver, for the desktops' C-MOVEs and C-GETs), pruned by age (by the
API), and read back newest first for ``GET /audit``.

Written behind, not with each answer: a row committed on its own costs a synchronous write
(about 4 ms median and 6-8 ms at p95 on SQLite and PostgreSQL here, more on a busy disk),
and on SQLite a writer first waits for the catalog's write lock, which the sorter holds
while it files. An answer only appends its record to a list in memory; every `interval`
(0.5 s) the thread writes all it holds in one transaction (300 rows: 5 to 23 ms here).

What can be lost: a process that dies without shutting down (SIGKILL, a crash, a power cut)
loses the records of the last interval, and of as long as the catalog could not be written
before (a write that fails keeps them for the next, up to `MAX_HELD`, after which the oldest
go, with an error in the log). A shutdown (SIGTERM, the application's lifespan ending)
writes what is held.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Self

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import AuditEvent, Series, Study
from shared.catalog.states import AuditAction

log = logging.getLogger("dcmdb.audit")

MAX_HELD = 100_000  # records held while the catalog cannot be written
_PRUNE_BATCH = 5_000  # rows deleted per transaction: the write lock is never held long
_LOOKUP_BATCH = 500  # series UIDs per query (SQLite limits a statement's parameters)


@dataclass(frozen=True)
class AuditRecord:
    """One row of `AuditEvent`, as an answer leaves it; a series' study is looked up when
    the row is written."""

    at: dt.datetime
    key_name: str
    action: AuditAction
    study_uid: str | None
    series_uid: str | None
    job_id: int | None
    status: int
    bytes_sent: int
    client: str | None
    instances: int | None = None  # a C-MOVE's or C-GET's instances sent
    destination: str | None = None  # the AE title a C-MOVE sent to


class AuditTrail:
    """Audit records held in memory and written to the catalog by a thread of their own;
    `add` is safe from any thread and never waits for the catalog. Records older than
    `keep_days` are deleted at start and every `prune_every` seconds (`keep_days` None:
    never, by a process that leaves it to the API)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        keep_days: int | None,
        *,
        interval: float = 0.5,
        prune_every: float = 86_400.0,
    ) -> None:
        self._sessions = sessions
        self._keep = None if keep_days is None else dt.timedelta(days=keep_days)
        self._interval = interval
        self._prune_every = prune_every
        self._held: deque[AuditRecord] = deque(maxlen=MAX_HELD)
        self._lock = threading.Lock()  # guards _held
        self._writing = threading.Lock()  # one flush at a time: rows keep their order
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
        self._failing = False
        self._dropped = 0  # records dropped unwritten since the last write

    def add(self, record: AuditRecord) -> None:
        with self._lock:
            if len(self._held) == MAX_HELD:
                if not self._dropped:
                    log.error("audit: %d records held unwritten; dropping the oldest", MAX_HELD)
                self._dropped += 1
            self._held.append(record)

    def flush(self) -> int:
        """Write every record held now, in one transaction; how many. A write that fails
        holds them again, before any added meanwhile, and says so in the log (once until a
        write succeeds again)."""
        with self._writing:
            with self._lock:
                batch = list(self._held)
                self._held.clear()
            if not batch:
                return 0
            try:
                with self._sessions.begin() as session:
                    session.execute(insert(AuditEvent), _rows(session, batch))
            except BaseException as exc:
                with self._lock:
                    self._held = deque([*batch, *self._held], maxlen=MAX_HELD)
                if not isinstance(exc, Exception):
                    raise
                if not self._failing:
                    log.warning("audit: records not written (%s); held and tried again", exc)
                self._failing = True
                return 0
            if self._failing:
                log.info("audit: the records held are written")
            with self._lock:
                if self._dropped:
                    log.error("audit: %d records were dropped unwritten", self._dropped)
                self._failing, self._dropped = False, 0
            return len(batch)

    def prune(self, now: dt.datetime | None = None) -> int:
        """Delete the records older than the days kept; how many (none when not kept here)."""
        if self._keep is None:
            return 0
        return prune(self._sessions, (now or dt.datetime.now(dt.UTC)) - self._keep)

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, writing what is held."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        prune_at = time.monotonic()  # at start, then every prune_every
        while True:
            stopping = self._stopping.wait(self._interval)
            self.flush()
            if self._keep is not None and time.monotonic() >= prune_at:
                prune_at = time.monotonic() + self._prune_every
                try:
                    if pruned := self.prune():
                        log.info("audit: %d records older than %s deleted", pruned, self._keep)
                except Exception as exc:
                    log.warning(
                        "audit: old records not deleted (%s); tried again at the next prune", exc
                    )
            if stopping:
                if self._held:
                    log.error(
                        "audit: %d records lost: the catalog cannot be written", len(self._held)
                    )
                return


def _rows(session: Session, batch: list[AuditRecord]) -> list[dict[str, object]]:
    """The records as rows, each series' study filled in (None for one gone meanwhile)."""
    wanted = sorted({r.series_uid for r in batch if r.series_uid and not r.study_uid})
    studies: dict[str, str] = {}
    for start in range(0, len(wanted), _LOOKUP_BATCH):
        chunk = wanted[start : start + _LOOKUP_BATCH]
        found = session.execute(
            select(Series.series_instance_uid, Study.study_instance_uid)
            .join(Study, Study.id == Series.study_pk)
            .where(Series.series_instance_uid.in_(chunk))
        )
        studies.update({series: study for series, study in found})
    rows = [asdict(r) for r in batch]
    for row in rows:
        if row["series_uid"] and not row["study_uid"]:
            row["study_uid"] = studies.get(row["series_uid"])
    return rows


def prune(sessions: sessionmaker[Session], before: dt.datetime, batch: int = _PRUNE_BATCH) -> int:
    """Delete the records older than `before`, `batch` per transaction; how many."""
    total = 0
    while True:
        oldest = (
            select(AuditEvent.id).where(AuditEvent.at < before).order_by(AuditEvent.id).limit(batch)
        )
        with sessions.begin() as session:
            ids = list(session.scalars(oldest))
            if ids:
                session.execute(delete(AuditEvent).where(AuditEvent.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total


@dataclass(frozen=True)
class AuditFilters:
    key_name: str | None = None
    action: AuditAction | None = None
    study_uid: str | None = None
    since: dt.datetime | None = None  # inclusive
    until: dt.datetime | None = None  # exclusive


def read_events(
    session: Session, filters: AuditFilters, limit: int, before: int | None
) -> tuple[Sequence[AuditEvent], int | None]:
    """A page of the records that match, newest (highest id) first, and the `before` of the
    next page (None: this is the last)."""
    statement = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit + 1)
    for column, value in (
        (AuditEvent.key_name, filters.key_name),
        (AuditEvent.action, filters.action),
        (AuditEvent.study_uid, filters.study_uid),
    ):
        if value is not None:
            statement = statement.where(column == value)
    if filters.since is not None:
        statement = statement.where(AuditEvent.at >= filters.since)
    if filters.until is not None:
        statement = statement.where(AuditEvent.at < filters.until)
    if before is not None:
        statement = statement.where(AuditEvent.id < before)
    rows = session.scalars(statement).all()
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None

"""A retrieval job's end: everything it received filed, made durable in one step, checked.

The receiver answers the instances of dcmdb's own retrievals once written, unsynced
(`shared.unsynced`). Before the job reports ``completed``:

1. it waits until every instance received before its moves ended has left the incoming
   folders, that is, is filed (at most ``DCMDB_CHECK_WAIT`` seconds);
2. it syncs the filesystems of the data directory and the archive, one call each;
3. it checks each study on disk (`shared.pacs_check.check_on_disk`): what the PACS said
   each series holds against the instances whose file is there with its size.

What is missing (a receiver killed mid-move, a power cut before step 2) is fetched again,
and the steps run again, up to ``ROUNDS`` checks in all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.retriever.moving import StudyMove, study_failed
from services.retriever.settings import RetrieverSettings
from shared import retrievals
from shared.catalog.models import RetrievalStudy
from shared.catalog.states import StudyRetrievalState
from shared.incoming import waiting_before
from shared.pacs_check import check_on_disk
from shared.unsynced import UnsyncedFiles

log = logging.getLogger("dcmdb.retriever")

ROUNDS = 3  # checks at a job's end: the first, and one after each fetch of what is missing
_LOOK_EVERY = 0.05  # seconds between looks at the incoming folders
_CHECKED = (
    StudyRetrievalState.COMPLETED,
    StudyRetrievalState.ALREADY_COMPLETE,
    StudyRetrievalState.FAILED,
)


class JobClock:
    """Where a job's time goes: seconds per part, and the span of its moves (they overlap)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = defaultdict(float)
        self._moves: list[float] = []
        self._lock = threading.Lock()

    @contextmanager
    def timing(self, part: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            end = time.monotonic()
            with self._lock:
                self.seconds[part] += end - start
                if part == "moves":
                    self._moves += [start, end]

    def summary(self) -> dict[str, float]:
        """Seconds: in all, of the queries, of the moves (from the first's start to the
        last's end), waiting for filing, of the final sync and of the check on disk."""
        parts = {part: round(self.seconds.get(part, 0.0), 3) for part in _PARTS}
        parts["moves"] = round(max(self._moves) - min(self._moves), 3) if self._moves else 0.0
        return {"total": round(time.monotonic() - self.started, 3), **parts}


_PARTS = ("queries", "moves", "filing", "sync", "check")


class Settling:
    """The steps for one data directory."""

    def __init__(self, settings: RetrieverSettings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._unsynced = UnsyncedFiles(settings.data_dir)

    def wait_for_filing(self, moves_ended: int, keep_alive: Callable[[], object]) -> int:
        """Wait until nothing received before `moves_ended` (ns) waits in incoming; how many
        still wait at the deadline (the sorter is away: the check finds them missing)."""
        settings = self._settings
        others = {settings.archive_root, settings.quarantine_dir}
        deadline = time.monotonic() + settings.check_wait
        touched = time.monotonic()
        while waiting := waiting_before(settings.data_dir, moves_ended, others):
            if time.monotonic() > deadline:
                log.warning("%d received instance(s) still not filed; checking anyway", waiting)
                return waiting
            if time.monotonic() - touched > 1.0:
                keep_alive()
                touched = time.monotonic()
            time.sleep(_LOOK_EVERY)
        return 0

    def make_durable(self) -> int:
        """Sync the data directory and the archive; how many unsynced instances that made
        durable. OSError when a sync fails."""
        return self._unsynced.make_durable(self._settings.archive_root)

    def settle(
        self,
        job_id: int,
        clock: JobClock,
        fetch_again: Callable[[list[StudyMove]], None],
    ) -> None:
        """Wait for filing, sync once, check on disk; fetch again what is missing."""
        moves_ended = time.time_ns()
        for number in range(1, ROUNDS + 1):
            with clock.timing("filing"):
                self.wait_for_filing(moves_ended, lambda: retrievals.touch(self._sessions, job_id))
            studies = self._checked_studies(job_id)
            try:
                with clock.timing("sync"):
                    synced = self.make_durable()
            except OSError as exc:
                for row_id, *_rest in studies:
                    study_failed(
                        self._sessions, row_id, f"cannot make what was received durable: {exc}"
                    )
                return
            log.info("retrieval job %d: %d instance(s) synced at once", job_id, synced)
            with clock.timing("check"):
                checks = check_on_disk(
                    self._sessions, self._settings.archive_root, [s[1] for s in studies]
                )
            missing = []
            for (row_id, uid, state, reason), check in zip(studies, checks, strict=True):
                if not check.counted:  # the PACS did not say what it holds: the move's word
                    continue
                if check.complete:
                    if state == StudyRetrievalState.FAILED:  # what failed came on a later move
                        retrievals.update_study(
                            self._sessions, row_id, state=StudyRetrievalState.COMPLETED, reason=""
                        )
                elif number < ROUNDS:
                    missing.append(StudyMove(row_id, uid, sorted(check.missing)))
                else:
                    count = sum(check.missing.values())
                    study_failed(
                        self._sessions, row_id, reason or f"{count} instance(s) missing on disk"
                    )
            if not missing or number == ROUNDS or retrievals.touch(self._sessions, job_id):
                return
            log.warning(
                "retrieval job %d: %d study(ies) incomplete on disk; fetching what is missing",
                job_id,
                len(missing),
            )
            fetch_again(missing)
            moves_ended = time.time_ns()

    def _checked_studies(self, job_id: int) -> list[tuple[int, str, StudyRetrievalState, str]]:
        """The studies the job's end checks on disk: those the PACS listed series of."""
        with self._sessions() as session:
            rows = session.execute(
                select(
                    RetrievalStudy.id,
                    RetrievalStudy.study_uid,
                    RetrievalStudy.state,
                    RetrievalStudy.reason,
                )
                .where(
                    RetrievalStudy.job_id == job_id,
                    RetrievalStudy.state.in_(_CHECKED),
                    RetrievalStudy.expected_series.is_not(None),
                )
                .order_by(RetrievalStudy.id)
            ).all()
        return [(row_id, uid, state, reason) for row_id, uid, state, reason in rows]

"""Running one retrieval job: find the studies, check each against the catalog, move what
is missing to dcmdb's own receiver, make it durable, check it on disk, record how it went.

Instances come by C-MOVE, or by C-GET for a peer configured so (handed on to the
receiver by `forwarding`). The C-MOVE destination is always dcmdb's own AE title from its
settings. Association failures, and a move of which not one instance arrived, are retried
with backoff, then the study (or the job, for the C-FIND) fails with the reason.
Instances moved arrive at the receiver like any other and are filed by the sorter; what
the PACS said each series holds lets the sorter complete a retrieved series as soon as it
is whole.

The work overlaps: up to ``DCMDB_RETRIEVE_PARALLEL`` moves run at once, one per study, each
on its association, while the queries of the next studies go on. A study the catalog has
nothing of moves whole at once; its series are listed and counted meanwhile (at IMAGE level
where the PACS gives no counts, as dcmqrscp does not), over one association, and the study
ends once that is recorded. The job's end is `settling`'s.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.retriever.forwarding import Forwarder
from services.retriever.moving import (
    Lines,
    MoveWatch,
    StudyMove,
    kept_associations,
    study_failed,
)
from services.retriever.settings import RetrieverSettings
from services.retriever.settling import JobClock, Settling
from shared import dimse_status, retrievals
from shared.catalog.models import RetrievalJob, RetrievalStudy
from shared.catalog.states import JobState, StudyRetrievalState
from shared.errors import PacsError
from shared.naming import physician_folder
from shared.pacs import Peer
from shared.pacs_check import (
    StudyCheck,
    catalog_counts,
    check_study,
    counted_check,
    record_expectations,
)
from shared.pacs_find import StudyMatch, StudyQuery, counted_series, find_studies
from shared.pacs_retrieve import RetrieveResult, retrieve
from shared.retrievals import RESCUE

log = logging.getLogger("dcmdb.retriever")

T = TypeVar("T")
_NO_SERIES = "the PACS lists no series of it"


class JobRunner:
    def __init__(
        self,
        settings: RetrieverSettings,
        sessions: sessionmaker[Session],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._sleep = sleep
        self._settling = Settling(settings, sessions)

    def run(self, job_id: int) -> None:
        with self._sessions() as session:
            job = session.get(RetrievalJob, job_id)
            assert job is not None
            origin, pacs, query = job.origin, job.pacs, json.loads(job.query)
            labs = None if job.labs is None else frozenset(json.loads(job.labs))
        log.info("retrieval job %d (%s) started", job_id, origin)
        clock = JobClock()
        try:
            # A rescue fetches what the PACS lacks straight from the scanner.
            peer = self._settings.scanner(pacs) if origin == RESCUE else self._settings.peer(pacs)
        except ValueError as exc:
            retrievals.finish(self._sessions, job_id, JobState.FAILED, str(exc))
            return
        if origin not in ("repair", RESCUE):
            try:
                with clock.timing("queries"):
                    matches = self._with_retries(
                        lambda: find_studies(peer, StudyQuery(**query)), f"C-FIND on {peer}"
                    )
            except PacsError as exc:
                retrievals.finish(self._sessions, job_id, JobState.FAILED, str(exc))
                log.warning("retrieval job %d failed: %s", job_id, exc)
                return
            if labs is not None:
                matches = self._of_labs(job_id, matches, labs)
            retrievals.add_studies(self._sessions, job_id, [m.study_uid for m in matches])
        if not self._move_all(job_id, peer, self._open_studies(job_id), clock):
            self._settling.settle(
                job_id, clock, lambda missing: self._fetch_again(job_id, peer, missing, clock)
            )
        state, reason = self._outcome(job_id)
        gaps = (
            self._gaps(job_id, peer)
            if origin == "nightly" and state != JobState.CANCELLED
            else None
        )
        log.info("retrieval job %d timings: %s", job_id, json.dumps(clock.summary()))
        retrievals.finish(self._sessions, job_id, state, reason, gaps)
        log.info("retrieval job %d %s%s", job_id, state, f": {reason}" if reason else "")

    def _of_labs(
        self, job_id: int, matches: list[StudyMatch], labs: frozenset[str]
    ) -> list[StudyMatch]:
        """The matches a lab's job may fetch: those its referring physician files into
        one of the job's labs, as the sorter would file them."""
        aliases = self._settings.aliases()
        kept = [m for m in matches if physician_folder(m.referring_physician, aliases) in labs]
        if len(kept) < len(matches):
            log.info(
                "retrieval job %d: %d of %d studies found belong to other labs and are left",
                job_id,
                len(matches) - len(kept),
                len(matches),
            )
        return kept

    def _open_studies(self, job_id: int) -> list[tuple[int, str, list[str]]]:
        with self._sessions() as session:
            rows = session.execute(
                select(RetrievalStudy.id, RetrievalStudy.study_uid, RetrievalStudy.series_uids)
                .where(
                    RetrievalStudy.job_id == job_id,
                    RetrievalStudy.state.in_(
                        (StudyRetrievalState.QUEUED, StudyRetrievalState.RUNNING)
                    ),
                )
                .order_by(RetrievalStudy.id)
            ).all()
        return [(row_id, uid, json.loads(only or "[]")) for row_id, uid, only in rows]

    def _move_all(
        self, job_id: int, peer: Peer, studies: list[tuple[int, str, list[str]]], clock: JobClock
    ) -> bool:
        """Query each study in turn while up to DCMDB_RETRIEVE_PARALLEL moves run; True when
        the job was cancelled."""
        cancelled = False
        parallel = self._settings.retrieve_parallel
        with (
            kept_associations(peer) as lines,
            ThreadPoolExecutor(parallel, thread_name_prefix="move") as moves,
            ThreadPoolExecutor(1, thread_name_prefix="count") as counting,
        ):
            running = []
            for row_id, study_uid, only in studies:
                if retrievals.touch(self._sessions, job_id):
                    cancelled = True
                    break
                with clock.timing("queries"):
                    move = self._plan(peer, row_id, study_uid, only, counting)
                if move is not None:
                    running.append(moves.submit(self._move, job_id, peer, move, clock, lines))
            for future in running:
                future.result()
        if cancelled:
            self._cancel_rest(job_id)
        return cancelled

    def _plan(
        self,
        peer: Peer,
        row_id: int,
        study_uid: str,
        only: list[str],
        counting: ThreadPoolExecutor,
    ) -> StudyMove | None:
        """What to move of a study; None when nothing (or its queries failed)."""
        in_catalog = catalog_counts(self._sessions, study_uid)
        if not only and not any(in_catalog.values()):
            # Nothing of it here: all of it moves at once, and is surveyed meanwhile.
            retrievals.update_study(self._sessions, row_id, state=StudyRetrievalState.RUNNING)
            later = counting.submit(self._survey, peer, row_id, study_uid)
            return StudyMove(row_id, study_uid, None, later)
        try:
            on_pacs = self._with_retries(
                lambda: counted_series(peer, study_uid), f"C-FIND on {peer}"
            )
        except PacsError as exc:
            study_failed(self._sessions, row_id, str(exc))
            return None
        if not on_pacs:
            study_failed(self._sessions, row_id, _NO_SERIES)
            return None
        check = counted_check(peer.name, study_uid, on_pacs, in_catalog)
        record_expectations(self._sessions, study_uid, check)
        if not only and check.complete:
            retrievals.update_study(
                self._sessions,
                row_id,
                state=StudyRetrievalState.ALREADY_COMPLETE,
                remaining=0,
                **_expected(check),
            )
            return None
        retrievals.update_study(
            self._sessions, row_id, state=StudyRetrievalState.RUNNING, **_expected(check)
        )
        return StudyMove(row_id, study_uid, only or _what_to_move(check))

    def _survey(self, peer: Peer, row_id: int, study_uid: str) -> str | None:
        """What the PACS holds of a moving study, each series counted, recorded for the
        sorter's completion and the job's end; why not, when it could not be."""
        try:
            on_pacs = self._with_retries(
                lambda: counted_series(peer, study_uid), f"C-FIND on {peer}"
            )
        except PacsError as exc:  # nothing to check the study against at the job's end
            return f"the PACS did not say what the study holds: {exc}"
        if not on_pacs:
            return _NO_SERIES
        check = counted_check(peer.name, study_uid, on_pacs, {})
        record_expectations(self._sessions, study_uid, check)
        retrievals.update_study(self._sessions, row_id, **_expected(check))
        return None

    def _move(
        self, job_id: int, peer: Peer, move: StudyMove, clock: JobClock, lines: Lines
    ) -> None:
        watch = MoveWatch(self._sessions, job_id, move.row_id)
        settings = self._settings
        to_us = (
            Forwarder(
                settings.ae_title,
                settings.receiver_host,
                settings.dicom_port,
                settings.own_receiver_tls(),
            )
            if peer.retrieve == "get"
            else None
        )

        def attempt() -> RetrieveResult:
            result = retrieve(
                peer,
                peer.move_destination or settings.ae_title,
                move.study_uid,
                move.series,
                store=to_us.store if to_us is not None else None,
                progress=watch.progress,
                cancelled=watch.cancelled,
                association=lines.current() if lines is not None else None,
            )
            if result.nothing_arrived:  # asked again, as a PACS that does not answer is
                raise PacsError(f"{result.reason}; nothing arrived")
            return result

        try:
            with clock.timing("moves"):
                result = self._with_retries(attempt, f"C-{peer.retrieve.upper()} from {peer}")
        except PacsError as exc:
            if move.counting is not None:
                move.counting.result()
            study_failed(self._sessions, move.row_id, str(exc))
            return
        finally:
            if to_us is not None:
                to_us.close()
        # A study ends once what the PACS holds of it is recorded, for the job's end.
        uncounted = move.counting.result() if move.counting is not None else None
        if result.status == dimse_status.CANCEL or watch.cancel:
            state = StudyRetrievalState.CANCELLED
        elif result.succeeded and uncounted is None:
            state = StudyRetrievalState.COMPLETED
        else:
            state = StudyRetrievalState.FAILED
        retrievals.update_study(
            self._sessions,
            move.row_id,
            state=state,
            completed=result.completed,
            failed=result.failed,
            warning=result.warning,
            remaining=result.remaining,
            reason=result.reason or uncounted or "",
        )

    def _fetch_again(
        self, job_id: int, peer: Peer, missing: list[StudyMove], clock: JobClock
    ) -> None:
        """Move again, in parallel, what the job's end found missing on disk."""
        with (
            kept_associations(peer) as lines,
            ThreadPoolExecutor(self._settings.retrieve_parallel) as moves,
        ):
            for future in [
                moves.submit(self._move, job_id, peer, m, clock, lines) for m in missing
            ]:
                future.result()

    def _with_retries(self, attempt: Callable[[], T], what: str) -> T:
        attempts, delay = self._settings.pacs_attempts, self._settings.pacs_retry_delay
        for number in range(1, attempts + 1):
            try:
                return attempt()
            except PacsError as exc:
                if number == attempts:
                    raise PacsError(f"{exc} (after {attempts} attempts)") from exc
                pause = delay * 2 ** (number - 1)
                log.warning("%s failed (%s); trying again in %.1f s", what, exc, pause)
                self._sleep(pause)
        raise AssertionError("unreachable")

    def _cancel_rest(self, job_id: int) -> None:
        for row_id, _uid, _only in self._open_studies(job_id):
            retrievals.update_study(self._sessions, row_id, state=StudyRetrievalState.CANCELLED)

    def _outcome(self, job_id: int) -> tuple[JobState, str]:
        with self._sessions() as session:
            job = session.get(RetrievalJob, job_id)
            assert job is not None
            states = [row.state for row in job.studies]
            failures = [
                f"{r.study_uid}: {r.reason}"
                for r in job.studies
                if r.state == StudyRetrievalState.FAILED
            ]
        if StudyRetrievalState.CANCELLED in states:
            return JobState.CANCELLED, "cancelled on request"
        if not states:
            return JobState.COMPLETED, "no study matched on the PACS"
        if not failures:
            return JobState.COMPLETED, ""
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        reason = "; ".join(failures[:5]) + more
        return (JobState.FAILED if len(failures) == len(states) else JobState.PARTIAL), reason

    def _gaps(self, job_id: int, peer: Peer) -> list[dict[str, object]]:
        """The nightly run ends with the check: what the catalog still lacks, per study,
        once the moved instances had time to be filed."""
        with self._sessions() as session:
            uids = list(
                session.scalars(
                    select(RetrievalStudy.study_uid).where(RetrievalStudy.job_id == job_id)
                )
            )
        deadline = time.monotonic() + self._settings.check_wait
        gaps: list[dict[str, object]] = []
        for uid in uids:
            try:
                check = self._settled_check(job_id, peer, uid, deadline)
            except PacsError as exc:
                gaps.append({"study_uid": uid, "error": str(exc)})
                continue
            if not check.complete:
                gaps.append(
                    {
                        "study_uid": uid,
                        "missing_series": check.missing_series,
                        "missing_instances": check.missing_instances,
                    }
                )
        return gaps

    def _settled_check(self, job_id: int, peer: Peer, uid: str, deadline: float) -> StudyCheck:
        """The check once the study is whole, or as it is at the deadline."""
        while True:
            check = check_study(peer, self._sessions, uid)
            if check.complete or time.monotonic() > deadline:
                return check
            retrievals.touch(self._sessions, job_id)
            self._sleep(2.0)


def _expected(check: StudyCheck) -> dict[str, int]:
    return {
        "expected_series": len(check.series),
        "expected_instances": sum(s.pacs_instances for s in check.series),
    }


def _what_to_move(check: StudyCheck) -> list[str] | None:
    """The whole study when the catalog has none of it, else only the incomplete series."""
    if all(s.catalog_instances == 0 for s in check.series):
        return None
    return check.missing_series

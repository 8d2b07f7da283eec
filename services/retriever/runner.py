"""Running one retrieval job: find the studies, check each against the catalog, move what
is missing to dcmdb's own receiver, record how it went.

Instances come by C-MOVE, or by C-GET for a peer configured so (handed on to the
receiver by `forwarding`). The C-MOVE destination is always dcmdb's own AE title from its
settings. Association failures, and a move of which not one instance arrived, are retried
with backoff, then the study (or the job, for the C-FIND) fails with the reason.
Instances moved arrive at the receiver like any other and are filed by the sorter; what
the PACS said each series holds lets the sorter complete a retrieved series as soon as it
is whole.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.retriever.forwarding import Forwarder
from services.retriever.settings import RetrieverSettings
from shared import dimse_status, retrievals
from shared.catalog.models import RetrievalJob, RetrievalStudy
from shared.catalog.states import JobState, StudyRetrievalState
from shared.errors import PacsError
from shared.naming import physician_folder
from shared.pacs import Peer
from shared.pacs_check import StudyCheck, check_study, record_expectations
from shared.pacs_find import StudyMatch, StudyQuery, find_studies
from shared.pacs_retrieve import Progress, RetrieveResult, retrieve

log = logging.getLogger("dcmdb.retriever")

_WRITE_EVERY = 0.5  # seconds between progress writes
_CANCEL_EVERY = 0.2  # seconds between looks at the cancel flag during a move
T = TypeVar("T")


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

    def run(self, job_id: int) -> None:
        with self._sessions() as session:
            job = session.get(RetrievalJob, job_id)
            assert job is not None
            origin, pacs, query = job.origin, job.pacs, json.loads(job.query)
            labs = None if job.labs is None else frozenset(json.loads(job.labs))
        log.info("retrieval job %d (%s) started", job_id, origin)
        try:
            peer = self._settings.peer(pacs)
        except ValueError as exc:
            retrievals.finish(self._sessions, job_id, JobState.FAILED, str(exc))
            return
        if origin != "repair":
            try:
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
        for row_id, study_uid, only in self._open_studies(job_id):
            if retrievals.touch(self._sessions, job_id):
                self._cancel_rest(job_id)
                break
            self._study(job_id, peer, row_id, study_uid, only)
        state, reason = self._outcome(job_id)
        gaps = (
            self._gaps(job_id, peer)
            if origin == "nightly" and state != JobState.CANCELLED
            else None
        )
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

    def _study(self, job_id: int, peer: Peer, row_id: int, study_uid: str, only: list[str]) -> None:
        try:
            check = self._with_retries(
                lambda: check_study(peer, self._sessions, study_uid), f"C-FIND on {peer}"
            )
        except PacsError as exc:
            retrievals.update_study(
                self._sessions, row_id, state=StudyRetrievalState.FAILED, reason=str(exc)
            )
            return
        record_expectations(self._sessions, study_uid, check)
        expected = {
            "expected_series": len(check.series),
            "expected_instances": sum(s.pacs_instances for s in check.series),
        }
        if not check.series:
            retrievals.update_study(
                self._sessions,
                row_id,
                state=StudyRetrievalState.FAILED,
                reason="the PACS lists no series of it",
            )
            return
        wanted = only or _what_to_move(check)
        if not only and check.complete:
            retrievals.update_study(
                self._sessions,
                row_id,
                state=StudyRetrievalState.ALREADY_COMPLETE,
                remaining=0,
                **expected,
            )
            return
        retrievals.update_study(
            self._sessions, row_id, state=StudyRetrievalState.RUNNING, **expected
        )
        watch = _Watch(self._sessions, job_id, row_id)
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
                settings.ae_title,
                study_uid,
                wanted,
                store=to_us.store if to_us is not None else None,
                progress=watch.progress,
                cancelled=watch.cancelled,
            )
            if result.nothing_arrived:  # asked again, as a PACS that does not answer is
                raise PacsError(f"{result.reason}; nothing arrived")
            return result

        try:
            result = self._with_retries(attempt, f"C-{peer.retrieve.upper()} from {peer}")
        except PacsError as exc:
            retrievals.update_study(
                self._sessions, row_id, state=StudyRetrievalState.FAILED, reason=str(exc)
            )
            return
        finally:
            if to_us is not None:
                to_us.close()
        if result.status == dimse_status.CANCEL or watch.cancel:
            state = StudyRetrievalState.CANCELLED
        elif result.succeeded:
            state = StudyRetrievalState.COMPLETED
        else:
            state = StudyRetrievalState.FAILED
        retrievals.update_study(
            self._sessions,
            row_id,
            state=state,
            completed=result.completed,
            failed=result.failed,
            warning=result.warning,
            remaining=result.remaining,
            reason=result.reason or "",
        )

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


def _what_to_move(check: StudyCheck) -> list[str] | None:
    """The whole study when the catalog has none of it, else only the incomplete series."""
    if all(s.catalog_instances == 0 for s in check.series):
        return None
    return check.missing_series


class _Watch:
    """Progress into the catalog (at most every half second) and the cancel flag out."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, row_id: int) -> None:
        self._sessions, self._job_id, self._row_id = sessions, job_id, row_id
        self._written = 0.0
        self._asked = 0.0
        self.cancel = False

    def progress(self, counts: Progress) -> None:
        if time.monotonic() - self._written < _WRITE_EVERY and counts.remaining:
            return
        self._written = time.monotonic()
        retrievals.update_study(
            self._sessions,
            self._row_id,
            completed=counts.completed,
            failed=counts.failed,
            warning=counts.warning,
            remaining=counts.remaining,
        )

    def cancelled(self) -> bool:
        if not self.cancel and time.monotonic() - self._asked >= _CANCEL_EVERY:
            self._asked = time.monotonic()
            self.cancel = retrievals.touch(self._sessions, self._job_id)
        return self.cancel

"""Moving one study: what moves of it, its progress written to the catalog and the cancel
flag read back while it moves, and the associations kept from one move to the next."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from shared import retrievals
from shared.catalog.states import StudyRetrievalState
from shared.pacs import Peer
from shared.pacs_retrieve import MoveAssociations, Progress

# Seconds between progress writes, and between looks at the cancel flag, during a move: each
# is a catalog write the move's answers wait for (the last is written when the move ends).
_WRITE_EVERY = 0.5
_CANCEL_EVERY = 0.5


@dataclass(frozen=True)
class StudyMove:
    row_id: int
    study_uid: str
    series: list[str] | None  # None: the whole study
    counting: Future[str | None] | None = None  # the image-level count going on meanwhile


Lines = MoveAssociations | None


@contextmanager
def kept_associations(peer: Peer) -> Iterator[Lines]:
    """Associations kept for the next move, by C-MOVE; a C-GET's carries its store callback
    and is the move's own."""
    if peer.retrieve != "move":
        yield None
        return
    lines = MoveAssociations(peer)
    try:
        yield lines
    finally:
        lines.close()


def study_failed(sessions: sessionmaker[Session], row_id: int, reason: str) -> None:
    retrievals.update_study(sessions, row_id, state=StudyRetrievalState.FAILED, reason=reason)


class MoveWatch:
    """Progress into the catalog (at most every half second) and the cancel flag out."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, row_id: int) -> None:
        self._sessions, self._job_id, self._row_id = sessions, job_id, row_id
        self._written = 0.0
        self._asked = 0.0
        self.cancel = False

    def progress(self, counts: Progress) -> None:
        if time.monotonic() - self._written < _WRITE_EVERY:
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

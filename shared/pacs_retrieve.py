"""Retrieving a study from a PACS: C-MOVE to dcmdb's receiver, or C-GET into a callback.

``retrieve`` runs one request per series (or one for the study) over one association
(see `shared.pacs`), reports the PACS's sub-operation counts as they come, sends a
C-CANCEL when asked to, and words what went wrong for people (``failure_reason``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS, QR_MOVE_SERVICE_CLASS_STATUS

from shared.dimse_status import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    MOVE_DESTINATION_UNKNOWN,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES_MATCHES,
    OUT_OF_RESOURCES_SUBOPERATIONS,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    WARNING,
    is_cannot_understand,
    is_pending,
)
from shared.pacs import (
    GET_MODEL,
    MOVE_MODEL,
    SERVICES,
    StoreInstance,
    associate,
    lost_association,
    query_identifier,
)
from shared.peers import Peer

log = logging.getLogger("dcmdb.retriever")


@dataclass(frozen=True)
class Progress:
    """Sub-operation counts of a retrieval as the PACS reports them."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None  # None when the PACS does not say


@dataclass(frozen=True)
class RetrieveResult:
    status: int  # the final DICOM status: SUCCESS, WARNING, CANCEL or a failure
    completed: int
    failed: int
    warning: int
    remaining: int
    reason: str | None = None  # what went wrong, for people; None when nothing did

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS and self.failed == 0

    @property
    def nothing_arrived(self) -> bool:
        """Every sub-operation failed: the PACS could not reach the destination (dcmdb's
        receiver starting or restarting, say). Worth asking again, unlike
        MOVE_DESTINATION_UNKNOWN: a PACS that does not know the destination will not
        learn it by being asked again."""
        return self.completed == 0 and self.failed > 0 and self.status != MOVE_DESTINATION_UNKNOWN


def retrieve(
    peer: Peer,
    destination_ae: str,
    study_uid: str,
    series_uids: Sequence[str] | None = None,
    *,
    store: StoreInstance | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    timeout: float = 600,
    association: Association | None = None,
) -> RetrieveResult:
    """Retrieve a study, or only ``series_uids`` of it, over one association.

    C-MOVE sends the instances to ``destination_ae``, which the caller takes from
    dcmdb's own settings (the PACS knows it by that title); C-GET (``peer.retrieve ==
    "get"``) hands each one to ``store`` instead. ``cancelled`` is asked at each
    answer of the PACS; once it says True a C-CANCEL is sent and the result has the
    PACS's answer, normally CANCEL. ``timeout`` is how long to wait for each answer.
    ``association``: an established C-MOVE association to use, and leave open, instead of
    one of its own (`MoveAssociations`).
    """
    if peer.retrieve == "get" and store is None:
        raise ValueError(f"PACS {peer.name} is retrieved by C-GET: a store callback is needed")
    requests = [query_identifier("STUDY", {"StudyInstanceUID": study_uid})]
    if series_uids:
        requests = [
            query_identifier("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid})
            for uid in series_uids
        ]
    model = GET_MODEL if peer.retrieve == "get" else MOVE_MODEL
    opened = (
        nullcontext(association)
        if association is not None and model == MOVE_MODEL
        else associate(peer, model, timeout, store if model == GET_MODEL else None)
    )
    with opened as assoc:
        retrieval = _Retrieval(assoc, peer, model, destination_ae, progress, cancelled, timeout)
        for message_id, identifier in enumerate(requests, 1):
            if retrieval.status not in (SUCCESS, WARNING):
                break
            if cancelled is not None and cancelled():
                retrieval.status = CANCEL
                break
            retrieval.request(message_id, identifier)
    result = retrieval.result()
    log.info(
        "retrieved study %s from %s by C-%s: %d completed, %d failed, status 0x%04X",
        study_uid,
        peer,
        peer.retrieve.upper(),
        result.completed,
        result.failed,
        result.status,
    )
    return result


class MoveAssociations:
    """C-MOVE associations kept open for the next study, one per thread that moves: a
    PACS's answer to a new association (DCMTK's dcmqrscp forks a process for each) is
    then paid once per thread, not once per study. Closed (released) all at once."""

    def __init__(self, peer: Peer, timeout: float = 600) -> None:
        self._peer, self._timeout = peer, timeout
        self._open: dict[int, tuple[ExitStack, Association]] = {}
        self._lock = threading.Lock()

    def current(self) -> Association:
        """This thread's association, opened anew when it has none or lost it; PacsError
        when the PACS cannot be associated with."""
        key = threading.get_ident()
        with self._lock:
            held = self._open.pop(key, None)
        if held is not None:
            stack, association = held
            if association.is_established:
                with self._lock:
                    self._open[key] = held
                return association
            stack.close()
        stack = ExitStack()
        association = stack.enter_context(associate(self._peer, MOVE_MODEL, self._timeout))
        with self._lock:
            self._open[key] = (stack, association)
        return association

    def close(self) -> None:
        with self._lock:
            held, self._open = list(self._open.values()), {}
        for stack, _association in held:
            stack.close()


@dataclass
class _Retrieval:
    """A retrieval's requests (one per series, or one for the study) and their counts."""

    assoc: Association
    peer: Peer
    model: str
    destination_ae: str
    progress: Callable[[Progress], None] | None
    cancelled: Callable[[], bool] | None
    timeout: float
    status: int = SUCCESS
    finished: Progress = field(default_factory=Progress)  # the sums of the finished requests
    cancel_sent: bool = False
    comment: str | None = None  # the PACS's own words on a failure

    def request(self, message_id: int, identifier: Dataset) -> None:
        if self.model == MOVE_MODEL:
            destination = self.destination_ae
            answers = self.assoc.send_c_move(identifier, destination, MOVE_MODEL, message_id)
        else:
            answers = self.assoc.send_c_get(identifier, GET_MODEL, message_id)
        counts = Progress()
        waiting_since = time.monotonic()
        for status, _ in answers:
            if "Status" not in status:
                raise lost_association(self.peer, SERVICES[self.model], waiting_since, self.timeout)
            waiting_since = time.monotonic()
            code = int(status.Status)
            counts = _counts(status, counts)
            if is_pending(code):
                self._report(self._plus(counts))
                self._cancel_if_asked(message_id)
            elif code != SUCCESS:
                self.status = code
                self.comment = status.get("ErrorComment")
        if self.status in (SUCCESS, WARNING):
            counts = replace(counts, remaining=0)
        self.finished = self._plus(counts)
        self._report(self.finished)

    def _cancel_if_asked(self, message_id: int) -> None:
        if self.cancelled is not None and not self.cancel_sent and self.cancelled():
            self.assoc.send_c_cancel(message_id, query_model=self.model)
            self.cancel_sent = True

    def _plus(self, counts: Progress) -> Progress:
        return Progress(
            completed=self.finished.completed + counts.completed,
            failed=self.finished.failed + counts.failed,
            warning=self.finished.warning + counts.warning,
            remaining=counts.remaining,
        )

    def _report(self, counts: Progress) -> None:
        if self.progress is not None:
            self.progress(counts)

    def result(self) -> RetrieveResult:
        done = self.finished
        return RetrieveResult(
            status=self.status,
            completed=done.completed,
            failed=done.failed,
            warning=done.warning,
            remaining=done.remaining or 0,
            reason=failure_reason(self.status, done, self.destination_ae, self.comment),
        )


def _counts(status: Dataset, previous: Progress) -> Progress:
    """The counts in an answer; a final answer may leave some out (then the last ones hold)."""

    def count(keyword: str, last: int | None) -> int | None:
        value = status.get(f"NumberOf{keyword}Suboperations")
        return last if value is None else int(value)

    return Progress(
        completed=cast(int, count("Completed", previous.completed)),
        failed=cast(int, count("Failed", previous.failed)),
        warning=cast(int, count("Warning", previous.warning)),
        remaining=count("Remaining", previous.remaining),
    )


_REASONS = {
    OUT_OF_RESOURCES_MATCHES: (
        "the PACS is out of resources: unable to calculate the number of matches"
    ),
    OUT_OF_RESOURCES_SUBOPERATIONS: (
        "the PACS is out of resources: unable to perform sub-operations"
    ),
    MOVE_DESTINATION_UNKNOWN: "move destination unknown to the PACS",
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: (
        "the PACS says the identifier does not match the SOP class"
    ),
    SOP_CLASS_NOT_SUPPORTED: "the PACS does not support this retrieval",
    NOT_AUTHORIZED: "the PACS refused: not authorized",
    CANCEL: "cancelled",
}


def failure_reason(
    status: int, counts: Progress, destination_ae: str | None = None, comment: str | None = None
) -> str | None:
    if status == SUCCESS and counts.failed == 0:
        return None
    if status in (SUCCESS, WARNING) or (status == OUT_OF_RESOURCES_SUBOPERATIONS and counts.failed):
        total = counts.completed + counts.failed + counts.warning
        text = f"{counts.failed} of {total} instances failed to arrive"
    elif status == MOVE_DESTINATION_UNKNOWN:
        text = f"move destination {destination_ae} unknown to the PACS"
    elif status in _REASONS:
        text = _REASONS[status]
    elif is_cannot_understand(status) and destination_ae is not None:
        # Orthanc answers so when it does not know the destination, or the study.
        text = f"the PACS could not process the move (is {destination_ae} one of its move "
        text += "destinations, and is the study there?)"
    else:
        known = {**QR_GET_SERVICE_CLASS_STATUS, **QR_MOVE_SERVICE_CLASS_STATUS}.get(status)
        text = f"the PACS failed: {known[1] or known[0]}" if known else "the PACS failed"
    text = f"{text} (0x{status:04X})"
    return f"{text}: {comment}" if comment else text

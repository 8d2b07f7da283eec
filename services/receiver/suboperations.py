"""The sub-operations of one C-MOVE or C-GET: the instances sent one after the other, their
tally, and the answers that report it to the desktop (pending after each, then the final
one), as `retrieve` decides them."""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from services.receiver.outgoing import Outgoing
from services.receiver.retrievable import Retrievable
from services.receiver.sending import AssociationLost
from services.receiver.transport import StoreAnswer
from shared.dimse_status import (
    CANCEL,
    OUT_OF_RESOURCES_SUBOPERATIONS,
    PENDING,
    SUCCESS,
    WARNING,
    error_comment,
)

log = logging.getLogger("dcmdb.receiver.retrieve")

Retrieve = C_MOVE | C_GET
_PATIENT_ROOT = frozenset(
    {PatientRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelGet}
)


@dataclass
class Tally:
    """The sub-operations of one retrieve, as they go."""

    found: Sequence[Retrievable]
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    comments: Counter[str] = field(default_factory=Counter)  # why sub-operations failed
    sent: dict[str, tuple[int, int]] = field(default_factory=dict)  # study: instances, bytes

    @property
    def total(self) -> int:
        return len(self.found)

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    @property
    def study_uids(self) -> list[str]:
        return list(dict.fromkeys(i.study_uid for i in self.found))

    def count(self, instance: Retrievable, answer: StoreAnswer) -> None:
        category = code_to_category(answer.status)
        if category in (STATUS_SUCCESS, STATUS_WARNING):
            if category == STATUS_SUCCESS:
                self.completed += 1
            else:
                self.warning += 1
            instances, size = self.sent.get(instance.study_uid, (0, 0))
            self.sent[instance.study_uid] = (instances + 1, size + instance.size)
            return
        self.failed += 1
        self.failed_uids.append(instance.outgoing.sop_instance_uid)
        self.comments[answer.error_comment or f"status 0x{answer.status:04X}"] += 1

    def lost(self, remaining: Sequence[Retrievable], reason: str) -> None:
        for instance in remaining:
            self.count(instance, StoreAnswer(None, OUT_OF_RESOURCES_SUBOPERATIONS, reason))

    def final(self) -> tuple[int, str | None]:
        """The final status and its comment: the most frequent reason of the failures."""
        if not self.failed and not self.warning:
            return SUCCESS, None
        if not self.failed:
            return WARNING, f"{self.warning} of {self.total} stored with warnings"
        reason = self.comments.most_common(1)[0][0]
        summary = f"{self.failed} of {self.total} failed: {reason}"
        return (OUT_OF_RESOURCES_SUBOPERATIONS if self.failed == self.total else WARNING), summary


Send = Callable[[Outgoing, int, Callable[[], None]], StoreAnswer]


def run_sub_operations(
    answers: Answers,
    tally: Tally,
    instances: Sequence[Retrievable],
    send: Send,
    ready: Callable[[Outgoing], None] | None = None,
) -> None:
    """Send each instance, answering pending after each; then the final answer. A
    C-CANCEL stops it between two instances; a lost association fails what is left.

    While an instance is with the destination (`send` calls back between writing the
    request and reading the answer), the pending answer of the one before goes out and the
    next one is made `ready` (its file opened, its data set found): off the critical path,
    the desktop hears of each sub-operation a moment later and the move takes less time."""
    message_ids = _message_ids(cast(int, answers.request.MessageID))
    report = _Once(None)  # the pending answer of the sub-operation before
    for index, instance in enumerate(instances):
        if answers.cancelled():
            report()
            log.info("%s cancelled with %d sub-operations left", answers.name, tally.remaining)
            answers.final(CANCEL, "cancelled by the desktop", tally, remaining=True)
            return
        following = instances[index + 1].outgoing if index + 1 < len(instances) else None

        def meanwhile(report: _Once = report, following: Outgoing | None = following) -> None:
            report()
            if ready is not None and following is not None:
                ready(following)

        try:
            answer = send(instance.outgoing, next(message_ids), meanwhile)
        except AssociationLost as exc:
            report()
            log.warning("%s: %s", answers.name, exc)
            tally.lost(instances[index:], str(exc))
            break
        report()  # when the sender sent nothing, and so did not call it
        tally.count(instance, answer)
        report = _Once(answers.pending(tally))
    report()
    status, comment = tally.final()
    answers.final(status, comment, tally)


class _Once:
    """A call made once at most, however often it is called."""

    def __init__(self, call: Callable[[], None] | None) -> None:
        self._call = call

    def __call__(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call()


def _message_ids(first: int) -> Iterator[int]:
    """Message IDs of the sub-operations: after the request's, within US, never 0."""
    current = first
    while True:
        current = current % 65535 + 1
        yield current


class Answers:
    """The responses to one C-MOVE or C-GET request."""

    def __init__(self, assoc: Association, request: Retrieve, context: PresentationContext):
        self.assoc = assoc
        self.request = request
        self.context = context
        self.is_move = isinstance(request, C_MOVE)
        self.name = "C-MOVE" if self.is_move else "C-GET"
        self.calling_ae = str(assoc.requestor.ae_title).strip()
        self.patient_root = str(context.abstract_syntax) in _PATIENT_ROOT
        self.level = "?"
        self.status = SUCCESS
        self.started = time.monotonic()
        # What every answer shares, its UID validated once: each answer is a copy.
        self._blank = C_MOVE() if self.is_move else C_GET()
        self._blank.MessageIDBeingRespondedTo = request.MessageID
        self._blank.AffectedSOPClassUID = request.AffectedSOPClassUID

    def identifier(self) -> Dataset:
        syntax = self.context.transfer_syntax[0]
        identifier = decode(
            cast(BytesIO, self.request.Identifier),
            syntax.is_implicit_VR,
            syntax.is_little_endian,
            syntax.is_deflated,
        )
        self.level = str(identifier.get("QueryRetrieveLevel", "?"))[:16]
        return identifier

    def cancelled(self) -> bool:
        return self.request.MessageID in self.assoc.dimse.cancel_req

    def pending(self, tally: Tally) -> Callable[[], None]:
        """The pending answer with the counts as they are now, to send when called."""
        response = self._response(PENDING, None, tally, remaining=True, failed_list=False)
        return lambda: self._dispatch(response)

    def refuse(self, status: int, comment: str) -> None:
        """A failure before any sub-operation, said in the log too."""
        log.warning("%s from %s refused: %s", self.name, self.calling_ae, comment)
        self.final(status, comment)

    def final(
        self,
        status: int,
        comment: str | None,
        tally: Tally | None = None,
        *,
        remaining: bool = False,
    ) -> None:
        """The last answer: the counts but for remaining (a cancel's too); with the
        failed instances when not a success or a refusal before any sub-operation."""
        self.status = status
        failed_list = status != SUCCESS
        self._dispatch(self._response(status, comment, tally, remaining, failed_list))

    def _response(
        self,
        status: int,
        comment: str | None,
        tally: Tally | None,
        remaining: bool,
        failed_list: bool,
    ) -> Retrieve:
        response = copy.copy(self._blank)
        response.Status = status
        if comment:
            response.ErrorComment = error_comment(comment)  # type: ignore[assignment]
        counts = tally or Tally(())
        if tally is not None or status == SUCCESS:
            if remaining:
                response.NumberOfRemainingSuboperations = counts.remaining
            response.NumberOfCompletedSuboperations = counts.completed
            response.NumberOfFailedSuboperations = counts.failed
            response.NumberOfWarningSuboperations = counts.warning
        if failed_list and tally is not None:
            failed = Dataset()
            failed.FailedSOPInstanceUIDList = counts.failed_uids
            syntax = self.context.transfer_syntax[0]
            encoded = encode(
                failed, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
            response.Identifier = BytesIO(cast(bytes, encoded))
        return response

    def _dispatch(self, response: Retrieve) -> None:
        if self.assoc.is_established:
            self.assoc.dimse.send_msg(response, cast(int, self.context.context_id))

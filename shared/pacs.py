"""The DICOM client side of PACS retrievals: find studies and series, then move or get them.

A ``Peer`` (see `shared.peers`) is a PACS as dcmdb knows it. ``find_studies``,
``find_series`` and ``count_instances`` run C-FIND in the Study Root model; ``retrieve``
runs C-MOVE to dcmdb's own receiver or, for a peer configured with ``retrieve: get``,
C-GET with each instance handed to a ``store`` callback. A failed association
(unreachable, rejected, aborted, silent) raises ``PacsError``; a retrieval the PACS
answers comes back as a ``RetrieveResult`` with its DICOM status and, when something
went wrong, a reason a person can act on. Identifiers are never logged.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS, QR_MOVE_SERVICE_CLASS_STATUS

from shared.errors import PacsError
from shared.headers import STORED_TRANSFER_SYNTAXES
from shared.peers import Peer

log = logging.getLogger("dcmdb.retriever")

# Patient IDs and names are in every identifier; pynetdicom must not log them.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

SUCCESS, WARNING, CANCEL = 0x0000, 0xB000, 0xFE00
UNKNOWN_DESTINATION = 0xA801
PENDING = (0xFF00, 0xFF01)

# The Study Root query/retrieve models.
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
CONNECT_TIMEOUT = 30.0

StoreInstance = Callable[[bytes, str, str, str], None]
"""``store(data_set_bytes, transfer_syntax_uid, sop_class_uid, sop_instance_uid)``."""


def tuned_requestor(assoc: Association) -> Association:
    """Make an association we requested answer its requests promptly and reliably.

    - Nagle's algorithm off: pynetdicom writes a request's command set and its data set
      (a C-FIND's identifier, a C-STORE's instance) as separate PDUs and does not set
      TCP_NODELAY, so the second write waited for the peer's delayed acknowledgement,
      40 ms on Linux, on every request (against storescp: 48 ms per C-STORE of a small
      CT, 4 ms without the wait).
    - Only the thread that sent a request takes its responses. pynetdicom's association
      thread checks for incoming requests between a pause flag and a queue read, and a
      ``send_*`` call can slip in between: once responses come that fast, the thread now
      and then took one, logged "Received unexpected C-STORE service message", and the
      request waited out its DIMSE timeout (pydicom/pynetdicom#875). Everything a peer
      sends on our associations answers a request of ours (C-GET's C-STOREs included,
      which ``send_c_get`` serves itself), so that thread has nothing to take.
    """
    connection = assoc.dul.socket.socket if assoc.dul.socket else None
    if connection is not None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    take = assoc.dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if threading.current_thread() is assoc:  # the association's own reactor
            return None, None
        return take(block)

    assoc.dimse.get_msg = get_msg  # type: ignore[method-assign]
    return assoc


@dataclass(frozen=True)
class StudyQuery:
    """C-FIND keys; each is left out of the match when None."""

    study_date: str | None = None  # "20240101", "20240101-20240131", "-20240131", "20240101-"
    patient_id: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    modality: str | None = None  # matched against ModalitiesInStudy
    referring_physician: str | None = None  # wildcards * and ? allowed

    def __post_init__(self) -> None:
        date = self.study_date
        if date is not None and not re.fullmatch(r"\d{8}|\d{8}-|-\d{8}|\d{8}-\d{8}", date):
            raise ValueError(f"study_date {date!r} is not YYYYMMDD or a range A-B")


@dataclass(frozen=True)
class StudyMatch:
    study_uid: str
    study_date: str
    study_time: str
    patient_id: str
    accession_number: str
    referring_physician: str
    modalities: tuple[str, ...]
    description: str
    series_count: int | None  # None when the PACS does not say
    instance_count: int | None


@dataclass(frozen=True)
class SeriesMatch:
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    instance_count: int | None  # None when the PACS does not say: see count_instances


@dataclass(frozen=True)
class Progress:
    """Sub-operation counts of a retrieval as the PACS reports them."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None  # None when the PACS does not say


@dataclass(frozen=True)
class RetrieveResult:
    status: int  # the final DICOM status: 0x0000, 0xB000, 0xFE00 (cancelled), a failure
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
        receiver starting or restarting, say). Worth asking again, unlike 0xA801: a PACS
        that does not know the destination will not learn it by being asked again."""
        return self.completed == 0 and self.failed > 0 and self.status != UNKNOWN_DESTINATION


def find_studies(peer: Peer, query: StudyQuery, *, timeout: float = 30) -> list[StudyMatch]:
    keys = {
        "StudyDate": query.study_date,
        "PatientID": query.patient_id,
        "AccessionNumber": query.accession_number,
        "StudyInstanceUID": query.study_uid,
        "ModalitiesInStudy": query.modality,
        "ReferringPhysicianName": query.referring_physician,
        "StudyTime": None,
        "StudyDescription": None,
        "NumberOfStudyRelatedSeries": None,
        "NumberOfStudyRelatedInstances": None,
    }
    with _associate(peer, FIND_MODEL, timeout) as assoc:
        studies = [_study(found) for found in _matches(assoc, peer, "STUDY", keys, timeout)]
        if query.modality is not None:
            # Some PACS (dcmqrscp) ignore ModalitiesInStudy: their series say it.
            studies = [_with_modalities(assoc, peer, study, timeout) for study in studies]
            studies = [study for study in studies if query.modality in study.modalities]
    return studies


def _study(found: Dataset) -> StudyMatch:
    return StudyMatch(
        study_uid=_text(found, "StudyInstanceUID"),
        study_date=_text(found, "StudyDate"),
        study_time=_text(found, "StudyTime"),
        patient_id=_text(found, "PatientID"),
        accession_number=_text(found, "AccessionNumber"),
        referring_physician=_text(found, "ReferringPhysicianName"),
        modalities=_texts(found, "ModalitiesInStudy"),
        description=_text(found, "StudyDescription"),
        series_count=_number(found, "NumberOfStudyRelatedSeries"),
        instance_count=_number(found, "NumberOfStudyRelatedInstances"),
    )


def _with_modalities(
    assoc: Association, peer: Peer, study: StudyMatch, timeout: float
) -> StudyMatch:
    if study.modalities:
        return study
    keys = {"StudyInstanceUID": study.study_uid, "SeriesInstanceUID": None, "Modality": None}
    series = _matches(assoc, peer, "SERIES", keys, timeout)
    return replace(study, modalities=tuple(sorted({_text(found, "Modality") for found in series})))


def find_series(peer: Peer, study_uid: str, *, timeout: float = 30) -> list[SeriesMatch]:
    keys = {
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": None,
        "Modality": None,
        "SeriesNumber": None,
        "SeriesDescription": None,
        "NumberOfSeriesRelatedInstances": None,
    }
    return [
        SeriesMatch(
            series_uid=_text(found, "SeriesInstanceUID"),
            modality=_text(found, "Modality"),
            series_number=_number(found, "SeriesNumber"),
            description=_text(found, "SeriesDescription"),
            instance_count=_number(found, "NumberOfSeriesRelatedInstances"),
        )
        for found in _find(peer, "SERIES", keys, timeout)
    ]


def count_instances(peer: Peer, study_uid: str, series_uid: str, *, timeout: float = 30) -> int:
    """The instances of one series, counted one C-FIND match at a time."""
    keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": None}
    return len(_find(peer, "IMAGE", keys, timeout))


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
) -> RetrieveResult:
    """Retrieve a study, or only ``series_uids`` of it, over one association.

    C-MOVE sends the instances to ``destination_ae``, which the caller takes from
    dcmdb's own settings (the PACS knows it by that title); C-GET (``peer.retrieve ==
    "get"``) hands each one to ``store`` instead. ``cancelled`` is asked at each
    answer of the PACS; once it says True a C-CANCEL is sent and the result has the
    PACS's answer, normally 0xFE00. ``timeout`` is how long to wait for each answer.
    """
    if peer.retrieve == "get" and store is None:
        raise ValueError(f"PACS {peer.name} is retrieved by C-GET: a store callback is needed")
    requests = [_identifier("STUDY", {"StudyInstanceUID": study_uid})]
    if series_uids:
        requests = [
            _identifier("SERIES", {"StudyInstanceUID": study_uid, "SeriesInstanceUID": uid})
            for uid in series_uids
        ]
    model = GET_MODEL if peer.retrieve == "get" else MOVE_MODEL
    with _associate(peer, model, timeout, store if model == GET_MODEL else None) as assoc:
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
                raise _lost(self.peer, _SERVICES[self.model], waiting_since, self.timeout)
            waiting_since = time.monotonic()
            code = int(status.Status)
            counts = _counts(status, counts)
            if code in PENDING:
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
            reason=_reason(self.status, done, self.destination_ae, self.comment),
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


_SERVICES = {
    FIND_MODEL: "Study Root C-FIND",
    MOVE_MODEL: "Study Root C-MOVE",
    GET_MODEL: "Study Root C-GET",
}

_REASONS = {
    0xA701: "the PACS is out of resources: unable to calculate the number of matches",
    0xA702: "the PACS is out of resources: unable to perform sub-operations",
    UNKNOWN_DESTINATION: "move destination unknown to the PACS",
    0xA900: "the PACS says the identifier does not match the SOP class",
    0x0122: "the PACS does not support this retrieval",
    0x0124: "the PACS refused: not authorized",
    0xFE00: "cancelled",
}


def _reason(
    status: int, counts: Progress, destination_ae: str | None = None, comment: str | None = None
) -> str | None:
    if status == SUCCESS and counts.failed == 0:
        return None
    if status in (SUCCESS, WARNING) or (status == 0xA702 and counts.failed):
        total = counts.completed + counts.failed + counts.warning
        text = f"{counts.failed} of {total} instances failed to arrive"
    elif status == UNKNOWN_DESTINATION:
        text = f"move destination {destination_ae} unknown to the PACS"
    elif status in _REASONS:
        text = _REASONS[status]
    elif 0xC000 <= status <= 0xCFFF and destination_ae is not None:
        # Orthanc answers so when it does not know the destination, or the study.
        text = f"the PACS could not process the move (is {destination_ae} one of its move "
        text += "destinations, and is the study there?)"
    else:
        known = {**QR_GET_SERVICE_CLASS_STATUS, **QR_MOVE_SERVICE_CLASS_STATUS}.get(status)
        text = f"the PACS failed: {known[1] or known[0]}" if known else "the PACS failed"
    text = f"{text} (0x{status:04X})"
    return f"{text}: {comment}" if comment else text


def _find(peer: Peer, level: str, keys: dict[str, str | None], timeout: float) -> list[Dataset]:
    with _associate(peer, FIND_MODEL, timeout) as assoc:
        return _matches(assoc, peer, level, keys, timeout)


def _matches(
    assoc: Association, peer: Peer, level: str, keys: dict[str, str | None], timeout: float
) -> list[Dataset]:
    matches = []
    waiting_since = time.monotonic()
    for status, found in assoc.send_c_find(_identifier(level, keys), FIND_MODEL):
        if "Status" not in status:
            raise _lost(peer, "C-FIND", waiting_since, timeout)
        waiting_since = time.monotonic()
        if status.Status in PENDING and found is not None:
            matches.append(found)
        elif status.Status != SUCCESS:
            reason = _reason(int(status.Status), Progress(), comment=status.get("ErrorComment"))
            raise PacsError(f"C-FIND at PACS {peer} failed: {reason}")
    return matches


def _identifier(level: str, keys: dict[str, str | None]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def _text(found: Dataset, keyword: str) -> str:
    value = found.get(keyword)
    return "" if value is None else str(value).strip()


def _texts(found: Dataset, keyword: str) -> tuple[str, ...]:
    value = found.get(keyword)
    if value is None or value == "":
        return ()
    return tuple(str(item) for item in value) if not isinstance(value, str) else (value,)


def _number(found: Dataset, keyword: str) -> int | None:
    value = found.get(keyword)
    return None if value is None or value == "" else int(value)


@dataclass
class _Negotiation:
    """What the association attempt saw, to say why it failed."""

    connected: bool = False
    answer: A_ASSOCIATE | None = None
    peer_aborted: bool = False

    def settle(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        while self.answer is None and not self.peer_aborted and time.monotonic() < deadline:
            time.sleep(0.005)

    def handlers(self) -> list[Any]:
        return [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_ACSE_RECV, self._received)]

    def _opened(self, event: evt.Event) -> None:
        self.connected = True

    def _received(self, event: evt.Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if isinstance(primitive, A_ASSOCIATE):
            self.answer = primitive
        elif isinstance(primitive, A_ABORT | A_P_ABORT):
            self.peer_aborted = True


@contextmanager
def _associate(
    peer: Peer, model: str, timeout: float, store: StoreInstance | None = None
) -> Iterator[Association]:
    ae = AE(ae_title=peer.calling_ae)
    ae.connection_timeout = ae.acse_timeout = min(timeout, CONNECT_TIMEOUT)
    ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(model)
    negotiation = _Negotiation()
    handlers = negotiation.handlers()
    roles: list[Any] = []
    if store is not None:  # C-GET: the PACS sends the instances back on this association
        for context in StoragePresentationContexts:
            ae.add_requested_context(cast(str, context.abstract_syntax), STORED_TRANSFER_SYNTAXES)
            roles.append(build_role(cast(str, context.abstract_syntax), scp_role=True))
        handlers.append((evt.EVT_C_STORE, _handle_store, [store]))
    started = time.monotonic()
    try:
        tls_args = None if peer.tls_context is None else (peer.tls_context, peer.host)
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            ext_neg=roles,
            evt_handlers=handlers,
            tls_args=tls_args,
        )
    except OSError as error:  # the host name does not resolve
        raise PacsError(f"PACS {peer} unreachable: {_os_error(error)}") from None
    if not assoc.is_established:
        if negotiation.connected:
            # The answer reaches our event handler from pynetdicom's own thread, at times
            # just after associate() returned.
            negotiation.settle()
        raise PacsError(_refusal(peer, negotiation, time.monotonic() - started, ae))
    tuned_requestor(assoc)
    try:
        if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
            raise PacsError(f"PACS {peer} does not offer {_SERVICES[model]}")
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _refusal(peer: Peer, negotiation: _Negotiation, elapsed: float, ae: AE) -> str:
    answer = negotiation.answer
    if answer is not None and answer.result in (0x01, 0x02):
        return (
            f"association rejected by PACS {peer}: {answer.reason_str} "
            f"({answer.result_str.lower()}, by the {answer.source_str})"
        )
    if answer is not None:
        return f"PACS {peer} accepted the association but none of the services asked for"
    if negotiation.connected:
        if negotiation.peer_aborted:
            return f"association aborted by PACS {peer} before it answered"
        return f"PACS {peer} did not answer the association request within {ae.acse_timeout:g} s"
    return f"PACS {peer} unreachable: {_connection_failure(peer, elapsed, ae.connection_timeout)}"


def _connection_failure(peer: Peer, elapsed: float, limit: float | None) -> str:
    # pynetdicom only logs why the connection failed; ask the network once more.
    if limit is not None and elapsed >= limit * 0.95:
        return f"no connection within {limit:g} s"
    try:
        with socket.create_connection((peer.host, peer.port), timeout=limit):
            return "the connection failed"
    except OSError as error:
        return _os_error(error)


def _os_error(error: OSError) -> str:
    return (error.strerror or str(error) or type(error).__name__).lower()


def _lost(peer: Peer, operation: str, waiting_since: float, timeout: float) -> PacsError:
    """pynetdicom ends the answers with an empty status when the association is gone."""
    waited = time.monotonic() - waiting_since
    if waited < timeout * 0.95:
        return PacsError(f"association aborted by PACS {peer} during {operation}")
    return PacsError(f"no answer from PACS {peer} to {operation} within {timeout:g} s")


def _handle_store(event: evt.Event, store: StoreInstance) -> int:
    """C-STORE sub-operations of a C-GET: each instance goes to ``store`` as received."""
    request = cast(C_STORE, event.request)
    try:
        store(
            cast(BytesIO, request.DataSet).getvalue(),
            str(event.context.transfer_syntax),  # type: ignore[attr-defined]
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
        )
    except Exception as error:
        log.error("a retrieved instance could not be stored: %s", error)
        return 0xA700  # out of resources
    return SUCCESS

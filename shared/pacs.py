"""The DICOM client side of PACS retrievals: associations with a PACS, and their failures.

A ``Peer`` (see `shared.peers`) is a PACS as dcmdb knows it. This module opens and
tunes the associations; `shared.pacs_find` runs C-FIND in the Study Root model
(``find_studies``, ``find_series``, ``count_instances``) and `shared.pacs_retrieve`
runs C-MOVE to dcmdb's own receiver or, for a peer configured with ``retrieve: get``,
C-GET with each instance handed to a ``store`` callback. A failed association
(unreachable, rejected, aborted, silent) raises ``PacsError``; a retrieval the PACS
answers comes back as a ``RetrieveResult`` with its DICOM status and, when something
went wrong, a reason a person can act on. Identifiers are never logged.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT

from shared.dimse_status import OUT_OF_RESOURCES, SUCCESS
from shared.errors import PacsError
from shared.headers import STORED_TRANSFER_SYNTAXES
from shared.peers import Peer

log = logging.getLogger("dcmdb.retriever")

# Patient IDs and names are in every identifier; pynetdicom must not log them.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

# The Study Root query/retrieve models.
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
SERVICES = {
    FIND_MODEL: "Study Root C-FIND",
    MOVE_MODEL: "Study Root C-MOVE",
    GET_MODEL: "Study Root C-GET",
}
CONNECT_TIMEOUT = 30.0
# An attempt that ended before this share of its time limit was not a time-out.
_ANSWER_LIMIT = 0.95

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


def query_identifier(level: str, keys: dict[str, str | None]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


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
def associate(
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
        raise PacsError(f"{peer.kind} {peer} unreachable: {_os_error(error)}") from None
    if not assoc.is_established:
        elapsed = time.monotonic() - started
        if negotiation.connected:
            # The answer reaches our event handler from pynetdicom's own thread, at times
            # just after associate() returned, and seconds later on a loaded machine: an
            # attempt that ended before its time limit had an answer or an abort coming.
            negotiation.settle(10.0 if elapsed < _ANSWER_LIMIT * ae.acse_timeout else 2.0)
        raise PacsError(_refusal(peer, negotiation, elapsed, ae))
    tuned_requestor(assoc)
    try:
        if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
            raise PacsError(f"{peer.kind} {peer} does not offer {SERVICES[model]}")
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _refusal(peer: Peer, negotiation: _Negotiation, elapsed: float, ae: AE) -> str:
    answer = negotiation.answer
    if answer is not None and answer.result in (0x01, 0x02):
        return (
            f"association rejected by {peer.kind} {peer}: {answer.reason_str} "
            f"({answer.result_str.lower()}, by the {answer.source_str})"
        )
    if answer is not None:
        return f"{peer.kind} {peer} accepted the association but none of the services asked for"
    if negotiation.connected:
        if negotiation.peer_aborted:
            return f"association aborted by {peer.kind} {peer} before it answered"
        if elapsed < _ANSWER_LIMIT * (ae.acse_timeout or CONNECT_TIMEOUT):
            return f"{peer.kind} {peer} closed the connection without answering the association"
        return (
            f"{peer.kind} {peer} did not answer the association request "
            f"within {ae.acse_timeout:g} s"
        )
    failure = _connection_failure(peer, elapsed, ae.connection_timeout)
    return f"{peer.kind} {peer} unreachable: {failure}"


def _connection_failure(peer: Peer, elapsed: float, limit: float | None) -> str:
    # pynetdicom only logs why the connection failed; ask the network once more.
    if limit is not None and elapsed >= limit * _ANSWER_LIMIT:
        return f"no connection within {limit:g} s"
    try:
        with socket.create_connection((peer.host, peer.port), timeout=limit):
            return "the connection failed"
    except OSError as error:
        return _os_error(error)


def _os_error(error: OSError) -> str:
    return (error.strerror or str(error) or type(error).__name__).lower()


def lost_association(peer: Peer, operation: str, waiting_since: float, timeout: float) -> PacsError:
    """pynetdicom ends the answers with an empty status when the association is gone."""
    waited = time.monotonic() - waiting_since
    if waited < timeout * 0.95:
        return PacsError(f"association aborted by {peer.kind} {peer} during {operation}")
    return PacsError(f"no answer from {peer.kind} {peer} to {operation} within {timeout:g} s")


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
        return OUT_OF_RESOURCES
    return SUCCESS

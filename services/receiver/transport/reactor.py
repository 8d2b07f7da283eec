"""The acceptor side: an event-driven association, the request handler and the server.

pynetdicom 3.0.4's association reactor sleeps 1 ms per loop; ``EventDrivenAssociation``
waits on an Event that its DUL and DIMSE queues set. ``StorageRequestHandler`` builds
those associations for each connection, and ``start_storage_server`` starts the
server as ``AE.start_server`` does, after checking the pynetdicom version.
"""

from __future__ import annotations

import copy
import functools
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import pynetdicom
from pynetdicom import _handlers, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler
from pynetdicom.utils import make_target

from services.receiver.admission import Admission, Slot, StorageServer
from services.receiver.transport import dul
from services.receiver.transport.dul import EventDrivenDUL, SignallingQueue
from services.receiver.transport.find_path import serve_find
from services.receiver.transport.pdu_socket import (
    DEFAULT_MAXIMUM_PDU_SIZE,
    MAX_PRE_ASSOCIATION_PDU,
    PDUSocket,
)
from services.receiver.transport.store_path import FastStoreDIMSE
from services.receiver.transport.version import check_pynetdicom_version

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    from pynetdicom import AE

LOGGER = logging.getLogger(__name__)

#: A service the server provides itself, in place of pynetdicom's service class for the
#: request: called with the association, the request primitive and its presentation context,
#: in the association's thread, it answers the request (see ``EventDrivenAssociation``).
ServeRequest = Callable[[Association, Any, PresentationContext], None]

#: pynetdicom's default handlers format every message (~0.1 ms each) and stop
#: the fast C-STORE paths, which skip building what they are handed.
_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
)


class EventDrivenAssociation(Association):
    """An acceptor whose reactor waits on an Event instead of sleeping 1 ms.

    Subclasses pynetdicom 3.0.4's ``Association``, relying on its private
    ``_run_reactor``, ``_reactor_checkpoint``, ``_is_paused``, ``_kill``,
    ``_serve_request`` and ``_accepted_cx``; ACSE and the service classes stay
    upstream's. Each overridden method says what upstream does there.
    """

    def __init__(self, ae: AE, mode: str) -> None:
        # Upstream's, with our DUL and DIMSE provider in place of its own, and
        # queues that wake the reactor when the DUL hands it something.
        self._wakeup = threading.Event()
        super().__init__(ae, mode)
        self.slot: Slot | None = None  # its place among the open connections
        # Requests served by the server's own services, by primitive type (C_MOVE, C_GET)
        self.services: Mapping[type, ServeRequest] = {}
        self.dul = EventDrivenDUL(self, on_stop=self._dul_stopped)
        self.dul.to_user_queue = SignallingQueue(self._wakeup.set)
        self.dimse = FastStoreDIMSE(self)
        self.dimse.msg_queue = SignallingQueue(self._wakeup.set)
        # Association.__init__ set the timers of the DUL we replaced
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def kill(self) -> None:
        # Upstream sets the flag its polling reactor sees within 1 ms; ours may be
        # waiting on the Event, so set that too before upstream's kill.
        self._kill = True
        self._wakeup.set()
        super().kill()

    def _dul_stopped(self) -> None:
        if self.slot is not None:
            self.slot.release()
        self._wakeup.set()

    def run_reactor(self) -> None:
        """pynetdicom's, but an exception while negotiating (a request with values its
        primitives refuse, such as a presentation context without an abstract syntax)
        aborts the association: pynetdicom lets it end this thread, and its DUL then
        waits for an answer to the peer for as long as the peer keeps the connection."""
        try:
            super().run_reactor()
        except Exception as exc:
            LOGGER.error("Exception in the association reactor, aborting association")
            LOGGER.exception(exc)
            self.abort()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """Upstream's, but a C-FIND request is served by the fast path when it can
        (``find_path``), and a request of a type the server serves itself (``services``)
        goes to that service instead of pynetdicom's service class: dcmdb's C-MOVE and
        C-GET, which send archived files as stored where pynetdicom's Query/Retrieve
        service re-encodes each data set it is handed. Upstream's checks (a release under
        way, not a request, an unknown context) and its handling of everything else stay
        upstream's; around the service, what upstream does around ``service_class.SCP``:
        C-CANCELs of earlier requests cleared, an exception logged and the association
        aborted. A service that took longer than the network timeout (a C-MOVE of a large
        study) was busy, not idle: the idle timer starts again when it returns."""
        ours = isinstance(msg, C_FIND) and msg.is_valid_request and not self._sent_release
        if ours and serve_find(self, msg, context_id):
            return
        serve = self.services.get(type(msg))
        context = self._accepted_cx.get(context_id)
        if serve is None or context is None or self._sent_release or not msg.is_valid_request:
            super()._serve_request(msg, context_id)
            return
        try:
            self.dimse.cancel_req = {}
            self._is_paused = True  # as upstream: in case the service calls send_*()
            serve(self, msg, context)
            self._is_paused = False
            self.dimse.cancel_req = {}
            self.dul._idle_timer.restart()
        except Exception as exc:
            LOGGER.exception(exc)
            self.abort()

    def _run_reactor(self) -> None:
        """``Association._run_reactor`` with an Event in place of the sleep.

        Upstream sleeps 1 ms before every turn, busy or not. Here a turn that
        served a request runs the next at once, an idle one waits for a wake-up
        (capped by the idle timer and ``MAX_WAIT``). The checks after serving are
        upstream's, but for the order of A-RELEASE-RP and EVT_RELEASED (below).
        """
        busy = False
        while not self._kill:
            # Waiting counts as paused: release()/send_*() from other threads
            # need the reactor off the queues, and a waiting one is.
            self._is_paused = True
            if not busy:
                idle = self.dul._idle_timer
                cap = dul.MAX_WAIT  # looked up each time: tests raise it
                timeout = cap if idle.timeout is None else min(cap, idle.remaining)
                self._wakeup.wait(max(0.0, timeout))
            # Cleared before the queues are read: a later put sets it again
            self._wakeup.clear()
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            busy = msg is not None  # more may be queued behind it
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                # pynetdicom sends the A-RELEASE-RP first, but its DUL only
                # sent it a millisecond later, after EVT_RELEASED. Ours sends
                # at once, and the peer's close could fire EVT_CONN_CLOSE
                # first: handlers rely on the old order.
                LOGGER.info("Association Released")
                self.is_released, self.is_established = True, False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.acse.send_release(is_response=True)
                self.kill()
                return
            if self.acse.is_aborted():
                kind = " (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else ""
                LOGGER.info("Association Aborted%s", kind)
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires
                self.is_aborted, self.is_established = True, False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


def _copy_context(context: Any) -> Any:
    # Upstream's RequestHandler deep-copies the contexts for every connection: ~40 ms with all
    # storage classes (each UID re-validated), before the peer sent a byte.
    # UIDs are immutable, so a shallow copy with its own list isolates as well.
    clone = copy.copy(context)
    clone._transfer_syntax = list(context._transfer_syntax)
    return clone


class StorageRequestHandler(RequestHandler):
    """pynetdicom's RequestHandler, building event-driven associations."""

    def _create_association(self) -> Association:
        """Upstream's, with our association and socket, the announced maximum PDU
        size of the server (not the AE's), a connection slot from admission,
        TCP_NODELAY, cheap context copies, and pynetdicom's logging handlers
        unbound unless the server asked for them."""
        server, client = self.server, cast(socket.socket, self.request)
        max_pdu = cast(int, getattr(server, "maximum_pdu_size", DEFAULT_MAXIMUM_PDU_SIZE))
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        if isinstance(server, StorageServer):
            assoc.slot = server.take_slot(client)
            assoc.services = server.services
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"  # AE finds it by name
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small, urgent replies
        assoc.set_socket(PDUSocket(assoc, client, max(max_pdu, MAX_PRE_ASSOCIATION_PDU)))

        acceptor = assoc.acceptor
        acceptor.maximum_length = max_pdu
        acceptor.ae_title = server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = self.ae.implementation_class_uid
        acceptor.implementation_version_name = self.ae.implementation_version_name
        acceptor.supported_contexts = [_copy_context(cx) for cx in server.contexts]
        assoc.requestor.address_info = self.remote

        for event, handlers in server._handlers.items():  # as RequestHandler binds them
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list, handlers):
                    assoc.bind(event, handler, args)
        if not getattr(server, "standard_logging", True):  # Association bound them too
            for event, handler in _STANDARD_LOG_HANDLERS:
                assoc.unbind(event, handler)
        return assoc


def start_storage_server(
    ae: AE,
    address: tuple[str, int],
    evt_handlers: list[Any],
    *,
    maximum_pdu_size: int = DEFAULT_MAXIMUM_PDU_SIZE,
    admission: Admission | None = None,
    ssl_context: ssl.SSLContext | None = None,
    ae_title: str | None = None,
    contexts: list[Any] | None = None,
    standard_logging: bool = False,
    services: Mapping[type, ServeRequest] | None = None,
) -> StorageServer:
    """Start an event-driven server in a background thread, as
    ``ae.start_server(address, block=False, ...)`` does (``ae.shutdown()`` or
    ``server.shutdown()`` stop it; port 0 picks a free one, see
    ``server.server_address``). `maximum_pdu_size` replaces
    ``ae.maximum_pdu_size``: we announce it and abort on longer PDUs.
    pynetdicom's per-message logging handlers are unbound unless
    `standard_logging`. `admission` limits the open connections (default: the
    AE's maximum associations, from any one host too). `services` serve requests of
    their primitive's type in place of pynetdicom's service classes.

    Refuses (``ConfigurationError``) to start on any pynetdicom release other than
    the one whose internals this package overrides."""
    check_pynetdicom_version(pynetdicom.__version__)
    if not 4096 <= maximum_pdu_size <= 64 * 1024 * 1024:
        raise ValueError("maximum_pdu_size must be between 4096 and 64 MiB")
    server = ae.make_server(
        address,
        ae_title=ae_title,
        contexts=contexts,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=StorageServer,
        request_handler=StorageRequestHandler,
    )
    server = cast(StorageServer, server)
    server.admission = admission or Admission(ae.maximum_associations, ae.maximum_associations)
    server.handshake_timeout = ae.acse_timeout or 30.0
    server.slots, server.refused = {}, set()
    server.maximum_pdu_size = maximum_pdu_size  # type: ignore[attr-defined]
    server.standard_logging = standard_logging  # type: ignore[attr-defined]
    server.services = dict(services or {})
    if not standard_logging:
        for event, handler in _STANDARD_LOG_HANDLERS:
            server.unbind(event, handler)
    thread = threading.Thread(
        # The poll interval only bounds how long a shutdown waits (socketserver's 0.5 s).
        target=make_target(functools.partial(server.serve_forever, poll_interval=0.05)),
        name=f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}",
        daemon=True,
    )
    thread.start()
    ae._servers.append(server)
    return server

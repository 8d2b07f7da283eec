"""The DUL (PS3.8 upper layer) of an acceptor: an event-driven reactor, PDUs read whole.

pynetdicom 3.0.4's ``DULServiceProvider.run_reactor`` sleeps 1 ms whenever a loop
found nothing to do and reads PDUs in 4 KiB pieces. ``EventDrivenDUL`` keeps its
state machine, queues and PDU decoding, waits in ``select()`` on the socket and a
wake-up socketpair instead, reads through ``PDUSocket`` and hands P-DATA-TF in an
established association straight to the C-STORE fast path (which replays what is
not a C-STORE request to pynetdicom).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AddressInformation

from services.receiver.transport.pdu_socket import MAX_PRE_ASSOCIATION_PDU, PDU_HEADER, PDUSocket
from services.receiver.transport.store_path import FastStoreDIMSE

LOGGER = logging.getLogger(__name__)

#: Cap on every blocking wait, of the DUL and of the association reactor. All state
#: changes wake the reactors directly; this only bounds the cost of a wake-up we
#: failed to foresee. Read at each wait, so tests can raise it to catch a missed one.
MAX_WAIT = 0.5
_ITEM_LENGTH = struct.Struct(">L")
_P_DATA_TF = 0x04
_PRE_ASSOCIATION_STATES = frozenset({"Sta1", "Sta2", "Sta3"})
#: State machine events raised by a primitive of the local user (PS3.8 9.2)
_PRIMITIVE_EVENTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})


class SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``signal()`` after every put, to wake its consumer."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


def split_pdvs(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """The PDV items of a P-DATA-TF body as views into it; None if they do not add up."""
    pdvs, offset = [], 0
    while offset + 6 <= len(body):
        (length,) = _ITEM_LENGTH.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > len(body):
            return None
        pdvs.append((body[offset + 4], body[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return pdvs if pdvs and offset == len(body) else None


class EventDrivenDUL(DULServiceProvider):
    """A DUL whose reactor blocks in ``select()`` instead of sleeping 1 ms.

    Subclasses pynetdicom 3.0.4's ``DULServiceProvider``; its state machine, its
    queues (``event_queue``, ``to_provider_queue``, ``to_user_queue``,
    ``_recv_pdu``), its timers and ``_decode_pdu`` stay. Our reactor loop asks
    ``_is_transport_event`` on every turn, which is where it waits when there is
    nothing else to do. Each overridden method says what upstream does there.
    """

    def __init__(self, assoc: Association, on_stop: Callable[[], None]) -> None:
        # Upstream's, plus a wake-up socketpair that a put on to_provider_queue
        # (a primitive to send) writes to, and `on_stop`, called when the thread ends.
        super().__init__(assoc)
        self._on_stop = on_stop
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_lock = threading.Lock()  # no late wake-up into a closed, reused fd
        self.to_provider_queue = SignallingQueue(self._wake)
        self._framing_lost = False  # PDU boundaries in the stream are unknown

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(BlockingIOError):  # full: one is pending
            if self._wake_w.fileno() != -1:
                self._wake_w.send(b"\0")

    def kill_dul(self) -> None:
        # Upstream only sets the flag, seen within 1 ms by its polling loop; ours
        # may be blocked in select(), so wake it.
        self._kill_thread = True
        self._wake()

    def send_command(self, context_id: int, command: bytes) -> None:
        """Send one command set as a P-DATA-TF, from this (the DUL) thread.

        What Sta6's DT-1 action does with a P-DATA primitive, minus the queue
        and the primitive; the DUL thread is the only one that writes to the
        socket, so nothing else can interleave.
        """
        item = struct.pack(">LB", len(command) + 2, context_id) + b"\x03" + command
        pdu = PDU_HEADER.pack(_P_DATA_TF, 0, len(item)) + item
        cast(PDUSocket, self.socket).send(pdu)

    def stop_dul(self) -> bool:
        # Upstream polls is_alive() every millisecond until the thread ends (and
        # would wait for itself forever if called from the DUL thread); we join.
        if self.state_machine.current_state != "Sta1":
            return False
        self.kill_dul()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def run_reactor(self) -> None:
        """Upstream's loop (``_react``), then what upstream leaves undone at its end:
        close the wake-up pair, unblock an acceptor still waiting for a request, and
        tell the association (which frees its connection slot)."""
        try:
            self._react()
        finally:
            with self._wake_lock:
                self._wake_r.close()
                self._wake_w.close()
            # An acceptor still waiting for the A-ASSOCIATE-RQ would wait out
            # the ACSE timeout; None tells it that no request is coming.
            self.to_user_queue.put(None)  # type: ignore[arg-type]
            self._on_stop()

    def _react(self) -> None:
        """pynetdicom's ``run_reactor`` without its sleep between idle loops.

        Waiting happens in ``_is_transport_event``, and a data PDU served by
        ``_receive_data_directly`` queues no event: the sleep would cost a
        scheduler round trip per PDU. pynetdicom lets an exception in a state
        machine action (a peer's A-ASSOCIATE-RQ or A-ABORT with values its
        primitives refuse) end this thread with the association left behind;
        here it aborts the association, as one while reading does.
        """
        self._idle_timer.start()
        while not self._kill_thread:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                self._step()
            except Exception as exc:
                LOGGER.error("Exception in the DUL reactor, aborting association")
                LOGGER.exception(exc)
                self._abort_at_once()
                return

    def _step(self) -> None:
        """Send a primitive or read a PDU, then run the next event's action."""
        if not self._process_recv_primitive() and self._is_transport_event():
            self._idle_timer.restart()
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            return
        try:
            self.state_machine.do_action(event)
        except InvalidEventError:
            # Every PDU from the peer has an action in every connected state, so this
            # is a primitive of our own that the peer overtook (a response to send
            # after an A-ABORT went out, in Sta13): nobody is left to send it to. It
            # is dropped, as its action would have taken it off the queue; do_action
            # has logged it.
            if event in _PRIMITIVE_EVENTS:
                with contextlib.suppress(queue.Empty):
                    self.to_provider_queue.get_nowait()

    def _abort_at_once(self) -> None:
        """What pynetdicom does when its reactor fails (A-ABORT, bypassing the state
        machine), then what its closing actions do: close the connection and say so
        (EVT_CONN_CLOSE), without which the handlers never see the association end."""
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 0x02, 0x00
        sock = cast(PDUSocket, self.socket)
        with contextlib.suppress(Exception):
            sock.send(abort.encode())
        connected = sock.socket is not None
        sock.close()
        if connected:
            address = cast(AddressInformation, self.assoc.requestor.address_info).as_tuple
            evt.trigger(self.assoc, evt.EVT_CONN_CLOSE, {"address": address})
        self.assoc.is_aborted, self.assoc.is_established = True, False
        self.assoc._kill = True
        self._kill_thread = True

    def _is_transport_event(self) -> bool:
        """Upstream's check for a PDU to read, and where the reactor waits.

        Upstream returns at once when the socket is not readable (its caller then
        sleeps). Here, with no event queued and no primitive to send, we block in
        ``_wait_for_work`` and look again. In Sta13 after a PDU we refused unread,
        the connection is closed instead of read on: its boundaries are lost.
        """
        if self._framing_lost and self.state_machine.current_state == "Sta13":
            cast(PDUSocket, self.socket).close()  # queues Evt17 without reading on
            return True
        if super()._is_transport_event():  # a PDU was read
            return True
        if not self.event_queue.empty():  # e.g. Evt17 from ``ready``: run it first
            return False
        self._wait_for_work()
        if self._process_recv_primitive():  # woken to send: its event is queued now
            return False
        return super()._is_transport_event()

    def _wait_for_work(self) -> None:
        """Block until the peer sends, a primitive is queued or ARTIM is due."""
        timeout, artim = MAX_WAIT, self.artim_timer
        if artim.timeout is not None and 0 < artim.remaining < timeout:
            timeout = artim.remaining
        sock = cast(PDUSocket, self.socket).socket
        try:
            select.select([self._wake_r] + ([sock] if sock else []), [], [], timeout)
            while self._wake_r.recv(4096):
                pass
        except (OSError, ValueError):
            pass  # drained, or the socket closed under us: ``ready`` reports it next

    def _read_pdu_data(self) -> None:
        """Read one PDU and queue its event, as pynetdicom's version does.

        Upstream reads the 6-byte header, then the announced length (any length)
        through ``AssociationSocket.recv`` with no deadline, and decodes every PDU
        into objects. Here a PDU longer than we accept is refused unread (Evt19),
        the whole PDU must arrive within ``_read_allowance``, and a P-DATA-TF may
        go to the DIMSE layer without being decoded (``_receive_data_directly``).
        """
        sock = cast(PDUSocket, self.socket)
        sock.deadline = time.monotonic() + self._read_allowance()
        try:
            if not sock.fill(0, PDU_HEADER.size):
                self.event_queue.put("Evt17")  # closed by the peer
                return
            pdu_type, _, length = PDU_HEADER.unpack(sock.pdu(0))
            if pdu_type not in range(0x01, 0x08) or length > self._pdu_limit():
                LOGGER.error("Refusing a PDU of type 0x%02X and %d bytes", pdu_type, length)
                # We cannot find the next PDU without reading this one, so
                # after the A-ABORT for Evt19, Sta13 closes instead of reading.
                self._framing_lost = True
                self.event_queue.put("Evt19")
                return
            if not sock.fill(PDU_HEADER.size, length):
                LOGGER.error("Connection closed before the entire PDU was received")
                self.event_queue.put("Evt17")
                return
        except OSError as exc:  # includes TimeoutError
            LOGGER.error("Connection lost while receiving a PDU: %s", exc)
            self.event_queue.put("Evt17")
            return
        if pdu_type == _P_DATA_TF and self._receive_data_directly(sock.pdu(length)):
            return
        try:  # _decode_pdu copies the bytes, so the buffer is free again
            pdu, event = self._decode_pdu(sock.pdu(length))  # type: ignore[arg-type]
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _receive_data_directly(self, pdu: memoryview) -> bool:
        """P-DATA-TF in an established association, straight to the DIMSE layer.

        What pynetdicom's state machine does for it (Evt10, action DT-2, back to
        Sta6), minus building PDU and primitive objects and copying the data
        twice on the way. False: take pynetdicom's path instead.
        """
        dimse = self.assoc.dimse
        if (
            self.state_machine.current_state != "Sta6"
            or not self.event_queue.empty()
            or not isinstance(dimse, FastStoreDIMSE)
            or not dimse.takes_fast_path()
            or self.assoc.get_handlers(evt.EVT_PDU_RECV)
            or self.assoc.get_handlers(evt.EVT_DATA_RECV)
        ):
            return False
        pdvs = split_pdvs(pdu[PDU_HEADER.size :])
        if pdvs is None:
            return False  # malformed: pynetdicom decodes it and says so
        dimse.receive_pdvs(pdvs)
        return True

    def _read_allowance(self) -> float:
        """How long the PDU whose first bytes are here may take to arrive whole:
        before the association, what is left of ARTIM (the ACSE timeout from
        the connection); after, the network timeout."""
        artim = self.artim_timer
        if self.state_machine.current_state in _PRE_ASSOCIATION_STATES and artim.timeout:
            return max(0.0, artim.remaining)
        return self.assoc.network_timeout or MAX_WAIT

    def _pdu_limit(self) -> int:
        """The longest PDU we accept now: once negotiated, what we told the peer."""
        limit = MAX_PRE_ASSOCIATION_PDU
        if self.state_machine.current_state not in _PRE_ASSOCIATION_STATES:
            limit = self.assoc.acceptor.maximum_length or limit
        return min(limit, cast(PDUSocket, self.socket).capacity)

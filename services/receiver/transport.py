"""Event-driven transport for pynetdicom's storage SCP.

pynetdicom 3.0.4 polls: its DUL reactor sleeps 1 ms when idle, the acceptor's
reactor 1 ms per loop; it reads PDUs in 4 KiB pieces and round-trips every
command set through pydicom (~0.7 ms per C-STORE). C-STORE being strictly
request/response, that caps a receiver near 300 instances/s. We keep its state
machine, ACSE, service classes and event handlers and replace only: the sleeps
(``EventDrivenDUL`` waits in ``select()`` on the socket and a wake-up
socketpair, ``EventDrivenAssociation`` on an Event); the reads (``PDUSocket``:
``recv_into`` one preallocated buffer, refusing PDUs longer than negotiated
before reading them); and the C-STORE command sets (``FastStoreDIMSE``).

Relies on pynetdicom 3.0.4 internals: the DUL's queues, ``_read_pdu_data``,
``_is_transport_event``, ``_decode_pdu``; ``Association._run_reactor``,
``_reactor_checkpoint``, ``_is_paused``, ``_kill``; ``DIMSEServiceProvider``
``message``/``msg_queue``; ``RequestHandler._create_association``;
``PresentationContext._transfer_syntax``; ``AE._servers``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import _config, _handlers, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import (
    AddressInformation,
    AssociationSocket,
    RequestHandler,
)
from pynetdicom.utils import make_target

from services.receiver.admission import Admission, Slot, StorageServer

if TYPE_CHECKING:  # pragma: no cover
    import ssl

    from pynetdicom import AE

LOGGER = logging.getLogger(__name__)

#: The largest PDU DCMTK's storescu sends; larger ones save little.
DEFAULT_MAXIMUM_PDU_SIZE = 128 * 1024
#: Largest PDU accepted before the association is accepted: an A-ASSOCIATE-RQ with
#: 128 presentation contexts and a user identity fits easily; more is hostile.
MAX_PRE_ASSOCIATION_PDU = 256 * 1024
#: Cap on every blocking wait. All state changes wake the reactors directly;
#: this only bounds the cost of a wake-up we failed to foresee.
_MAX_WAIT = 0.5
_PDU_HEADER = struct.Struct(">BBL")
_ITEM_LENGTH = struct.Struct(">L")
_P_DATA_TF = 0x04
_COMMAND_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian
_PRE_ASSOCIATION_STATES = frozenset({"Sta1", "Sta2", "Sta3"})
#: State machine events raised by a primitive of the local user (PS3.8 9.2)
_PRIMITIVE_EVENTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
#: pynetdicom's default handlers format every message (~0.1 ms each) and stop
#: the fast C-STORE paths, which skip building what they are handed.
_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
)
# C-STORE-RQ command elements -> (primitive attribute, VR); None: checked or ignored
_STORE_RQ_FIELDS: dict[int, tuple[str, str] | None] = {
    0x0000: None, 0x0100: None, 0x0800: None,  # group length, command, data set type
    0x0002: ("AffectedSOPClassUID", "UI"), 0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x0110: ("MessageID", "US"), 0x0700: ("Priority", "US"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}  # fmt: skip


class _SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``signal()`` after every put, to wake its consumer."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


def decode_c_store_rq(command: bytes) -> C_STORE | None:
    """The C-STORE-RQ primitive pynetdicom would decode from `command`.

    ``None`` for other commands and anything unusual (unknown elements, odd
    lengths, values the primitive's validating setters refuse): the caller
    hands those to pynetdicom, to decode or reject as it always has.
    """
    elements, offset = {}, 0
    while offset + 8 <= len(command):
        group, element, length = _COMMAND_ELEMENT.unpack_from(command, offset)
        elements[element] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
        if group != 0:
            return None
    if offset != len(command) or not elements.keys() <= _STORE_RQ_FIELDS.keys():
        return None
    if elements.get(0x0100) != b"\x01\x00" or elements.get(0x0800, b"\x01\x01") == b"\x01\x01":
        return None  # not a C-STORE-RQ, or one without a data set
    request = C_STORE()
    try:
        for element, raw in elements.items():
            if field := _STORE_RQ_FIELDS[element]:
                name, vr = field
                if vr == "US":
                    (value,) = struct.unpack("<H", raw)
                elif vr == "UI":  # as pydicom: no trailing NULs or spaces
                    value = raw.decode("ascii").rstrip("\0 ")
                else:  # AE: no spaces at either end
                    value = raw.decode("ascii").strip()
                setattr(request, name, value)
    except (ValueError, TypeError, struct.error):
        return None
    return request


def encode_c_store_rsp(rsp: C_STORE) -> bytes | None:
    """The command set pynetdicom would encode for `rsp`; ``None`` if it has
    the (rare) optional status elements or a UID that is not ASCII (a request
    pynetdicom decoded, echoed back), which are left to pynetdicom."""
    if rsp.OffendingElement is not None or rsp.ErrorComment is not None:
        return None
    uids = (rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID)
    if not all(uid is None or uid.isascii() for uid in uids):
        return None
    elements = [
        (0x0002, rsp.AffectedSOPClassUID),
        (0x0100, 0x8001),  # CommandField: C-STORE-RSP
        (0x0120, rsp.MessageIDBeingRespondedTo),
        (0x0800, 0x0101),  # CommandDataSetType: none
        (0x0900, rsp.Status),
        (0x1000, rsp.AffectedSOPInstanceUID),
    ]
    body = b""
    for element, value in elements:
        if value is None:
            continue  # pynetdicom omits unset parameters
        encoded = struct.pack("<H", value) if isinstance(value, int) else value.encode("ascii")
        encoded += b"\0" * (len(encoded) % 2)  # UIDs are padded with NUL
        body += _COMMAND_ELEMENT.pack(0, element, len(encoded)) + encoded
    return _COMMAND_ELEMENT.pack(0, 0x0000, 4) + struct.pack("<L", len(body)) + body


@dataclass(frozen=True)
class _StoreResponse:
    """What ``encode_c_store_rsp`` reads, without the primitive's validating setters:
    the UIDs are the request's, validated when it was decoded."""

    AffectedSOPClassUID: str | None
    MessageIDBeingRespondedTo: int | None
    Status: int
    AffectedSOPInstanceUID: str | None
    OffendingElement: None = None
    ErrorComment: None = None


class FastStoreDIMSE(DIMSEServiceProvider):
    """Receives C-STORE requests and sends their responses without pydicom.

    EVT_DIMSE_RECV/SENT hand out the pydicom-based messages skipped here, so
    the fast paths run only while nobody listens to those events.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._command = bytearray()  # command fragments received so far
        self._request: C_STORE | None = None  # a C-STORE-RQ awaiting its data set
        self._data = BytesIO()

    def receive_primitive(self, primitive: P_DATA) -> None:
        self.receive_pdvs(primitive.presentation_data_value_list)

    def takes_fast_path(self) -> bool:
        """True when the next PDVs may skip pynetdicom's decoding entirely."""
        between_messages = self._request is None and not self._command
        return self.message is None and not (
            between_messages
            and (_config.STORE_RECV_CHUNKED_DATASET or self.assoc.get_handlers(evt.EVT_DIMSE_RECV))
        )

    def receive_pdvs(self, pdvs: Sequence[tuple[int, bytes | memoryview]]) -> None:
        """Take (context ID, PDV with its control header) pairs; views are copied at once."""
        if not self.takes_fast_path():
            super().receive_primitive(_p_data(pdvs))
            return
        for index, (context_id, pdv) in enumerate(pdvs):
            is_command, is_last = pdv[0] & 1, pdv[0] & 2
            if self._request is None and is_command:
                self._command += memoryview(pdv)[1:]
                if not is_last:
                    continue
                command, self._command = bytes(self._command), bytearray()
                self._request = decode_c_store_rq(command)
                if self._request is None:  # replay the rest to pynetdicom
                    replay = [(context_id, b"\x03" + command), *pdvs[index + 1 :]]
                    super().receive_primitive(_p_data(replay))
                    return
                self._request._context_id = context_id
            elif self._request is not None and not is_command:
                self._data.write(memoryview(pdv)[1:])
                if is_last:
                    request, self._request = self._request, None
                    request.DataSet, self._data = self._data, BytesIO()
                    served = cast(EventDrivenAssociation, self.assoc).serve_store(request)
                    if not served:
                        self.msg_queue.put((cast(int, request._context_id), request))
            else:  # a command inside a data set or vice versa: framing is broken
                LOGGER.error("Received a DIMSE fragment out of order")
                self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
                return

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = None
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = encode_c_store_rsp(primitive)
        peer_max = self.maximum_pdu_size
        if command is None or (peer_max and len(command) > peer_max - 6):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        self.dul.send_pdu(pdata)


def _p_data(pdvs: Sequence[tuple[int, bytes | memoryview]]) -> P_DATA:
    primitive = P_DATA()
    # pynetdicom insists on [ID, PDV] lists
    primitive.presentation_data_value_list = [[cid, bytes(pdv)] for cid, pdv in pdvs]  # type: ignore[misc]
    return primitive


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


class PDUSocket(AssociationSocket):
    """An ``AssociationSocket`` that reads whole PDUs into one reused buffer."""

    def __init__(self, assoc: Association, client_socket: socket.socket, capacity: int) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.capacity = capacity  # largest PDU body that fits
        self._view = memoryview(bytearray(_PDU_HEADER.size + capacity))
        # Sends (our responses) wait at most the network timeout for the peer.
        self._send_timeout = assoc.network_timeout
        client_socket.settimeout(self._send_timeout)
        # When the PDU being read must be whole (set before each PDU); the network
        # (idle) timeout bounds the time between PDUs. A peer trickling a byte at
        # a time would keep each recv short but never finish.
        self.deadline = math.inf

    def fill(self, start: int, size: int) -> bool:
        """Read exactly `size` bytes into the buffer at `start`; False on EOF,
        TimeoutError once the deadline has passed."""
        sock, end = cast(socket.socket, self.socket), start + size
        while start < end:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the peer did not send the whole PDU in time")
            sock.settimeout(remaining)
            nread = sock.recv_into(self._view[start:end])
            if not nread:
                return False
            start += nread
        return True

    def send(self, bytestream: bytes) -> None:
        # What is left of a read's deadline is no bound for a send: reset it here, once
        # per response, rather than after every read.
        if (sock := self.socket) is not None:
            sock.settimeout(self._send_timeout)
        super().send(bytestream)

    def pdu(self, body_length: int) -> memoryview:
        """The PDU last read with :meth:`fill`, valid until the next read."""
        return self._view[: _PDU_HEADER.size + body_length]

    def _shutdown_socket(self) -> None:
        # pynetdicom skips close() when shutdown() fails (a peer that reset),
        # leaving the fd to the garbage collector.
        if (sock := self.socket) is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class EventDrivenDUL(DULServiceProvider):
    """A DUL whose reactor blocks in ``select()`` instead of sleeping 1 ms.

    pynetdicom's ``run_reactor`` stays; it asks ``_is_transport_event`` on
    every loop, which is where we wait when there is nothing else to do.
    """

    def __init__(self, assoc: Association, on_stop: Callable[[], None]) -> None:
        super().__init__(assoc)
        self._on_stop = on_stop
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_lock = threading.Lock()  # no late wake-up into a closed, reused fd
        self.to_provider_queue = _SignallingQueue(self._wake)
        self._framing_lost = False  # PDU boundaries in the stream are unknown

    def _wake(self) -> None:
        with self._wake_lock, contextlib.suppress(BlockingIOError):  # full: one is pending
            if self._wake_w.fileno() != -1:
                self._wake_w.send(b"\0")

    def kill_dul(self) -> None:
        self._kill_thread = True
        self._wake()

    def send_command(self, context_id: int, command: bytes) -> None:
        """Send one command set as a P-DATA-TF, from this (the DUL) thread.

        What Sta6's DT-1 action does with a P-DATA primitive, minus the queue
        and the primitive; the DUL thread is the only one that writes to the
        socket, so nothing else can interleave.
        """
        item = struct.pack(">LB", len(command) + 2, context_id) + b"\x03" + command
        pdu = _PDU_HEADER.pack(_P_DATA_TF, 0, len(item)) + item
        cast(PDUSocket, self.socket).send(pdu)

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self.kill_dul()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def run_reactor(self) -> None:
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
        timeout, artim = _MAX_WAIT, self.artim_timer
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
        """Read one PDU and queue its event, as pynetdicom's version does."""
        sock = cast(PDUSocket, self.socket)
        sock.deadline = time.monotonic() + self._read_allowance()
        try:
            if not sock.fill(0, _PDU_HEADER.size):
                self.event_queue.put("Evt17")  # closed by the peer
                return
            pdu_type, _, length = _PDU_HEADER.unpack(sock.pdu(0))
            if pdu_type not in range(0x01, 0x08) or length > self._pdu_limit():
                LOGGER.error("Refusing a PDU of type 0x%02X and %d bytes", pdu_type, length)
                # We cannot find the next PDU without reading this one, so
                # after the A-ABORT for Evt19, Sta13 closes instead of reading.
                self._framing_lost = True
                self.event_queue.put("Evt19")
                return
            if not sock.fill(_PDU_HEADER.size, length):
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
        pdvs = split_pdvs(pdu[_PDU_HEADER.size :])
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
        return self.assoc.network_timeout or _MAX_WAIT

    def _pdu_limit(self) -> int:
        """The longest PDU we accept now: once negotiated, what we told the peer."""
        limit = MAX_PRE_ASSOCIATION_PDU
        if self.state_machine.current_state not in _PRE_ASSOCIATION_STATES:
            limit = self.assoc.acceptor.maximum_length or limit
        return min(limit, cast(PDUSocket, self.socket).capacity)


class EventDrivenAssociation(Association):
    """An acceptor whose reactor waits on an Event instead of sleeping 1 ms."""

    def __init__(self, ae: AE, mode: str) -> None:
        self._wakeup = threading.Event()
        super().__init__(ae, mode)
        self.slot: Slot | None = None  # its place among the open connections
        self.dul = EventDrivenDUL(self, on_stop=self._dul_stopped)
        self.dul.to_user_queue = _SignallingQueue(self._wakeup.set)
        self.dimse = FastStoreDIMSE(self)
        self.dimse.msg_queue = _SignallingQueue(self._wakeup.set)
        # Association.__init__ set the timers of the DUL we replaced
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def kill(self) -> None:
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

    def serve_store(self, request: C_STORE) -> bool:
        """Run the C-STORE handler here, in the DUL thread, and send its response.

        pynetdicom would hand the request to the association thread and back,
        and build and re-validate a response primitive: a third of the cost of
        an instance. False when this request is not ours to serve that way.
        """
        context_id = cast(int, request._context_id)
        context = self._accepted_cx.get(context_id)
        handler = self.get_handlers(evt.EVT_C_STORE)
        if (
            context is None
            or not self.is_established
            or not isinstance(handler, tuple)
            or handler[0] is None
            or handler[0] is evt._c_store_handler  # pynetdicom's default: no handler bound
            or self.get_handlers(evt.EVT_DIMSE_SENT)
            or _config.UNRESTRICTED_STORAGE_SERVICE
        ):
            return False
        event = evt.Event(self, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})
        try:
            status = handler[0](event, *(handler[1] or []))
        except Exception:
            LOGGER.exception("Exception in handler bound to 'evt.EVT_C_STORE'")
            status = 0xC211
        if not isinstance(status, int):
            return self._respond_slowly(request, context_id, status)
        response = _StoreResponse(
            request.AffectedSOPClassUID, request.MessageID, status, request.AffectedSOPInstanceUID
        )
        command = encode_c_store_rsp(response)  # type: ignore[arg-type]
        cast(EventDrivenDUL, self.dul).send_command(context_id, cast(bytes, command))
        return True

    def _respond_slowly(self, request: C_STORE, context_id: int, status: Any) -> bool:
        """A handler that answered with a status Dataset: pynetdicom builds that response."""
        response = C_STORE()
        response.MessageIDBeingRespondedTo = request.MessageID
        response.AffectedSOPClassUID = request.AffectedSOPClassUID
        response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        response = StorageServiceClass(self).validate_status(status, response)
        self.dimse.send_msg(response, context_id)
        return True

    def _run_reactor(self) -> None:
        """``Association._run_reactor`` with an Event in place of the sleep."""
        busy = False
        while not self._kill:
            # Waiting counts as paused: release()/send_*() from other threads
            # need the reactor off the queues, and a waiting one is.
            self._is_paused = True
            if not busy:
                idle = self.dul._idle_timer
                timeout = _MAX_WAIT if idle.timeout is None else min(_MAX_WAIT, idle.remaining)
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
    # pynetdicom deep-copies the contexts for every connection: ~40 ms with all
    # storage classes (each UID re-validated), before the peer sent a byte.
    # UIDs are immutable, so a shallow copy with its own list isolates as well.
    clone = copy.copy(context)
    clone._transfer_syntax = list(context._transfer_syntax)
    return clone


class StorageRequestHandler(RequestHandler):
    """pynetdicom's RequestHandler, building event-driven associations."""

    def _create_association(self) -> Association:
        server, client = self.server, cast(socket.socket, self.request)
        max_pdu = cast(int, getattr(server, "maximum_pdu_size", DEFAULT_MAXIMUM_PDU_SIZE))
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = server
        if isinstance(server, StorageServer):
            assoc.slot = server.take_slot(client)
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
) -> StorageServer:
    """Start an event-driven server in a background thread, as
    ``ae.start_server(address, block=False, ...)`` does (``ae.shutdown()`` or
    ``server.shutdown()`` stop it; port 0 picks a free one, see
    ``server.server_address``). `maximum_pdu_size` replaces
    ``ae.maximum_pdu_size``: we announce it and abort on longer PDUs.
    pynetdicom's per-message logging handlers are unbound unless
    `standard_logging`. `admission` limits the open connections (default: the
    AE's maximum associations, from any one host too)."""
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

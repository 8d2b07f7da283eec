"""Archived instances sent to a desktop: the C-STORE sub-operations of a C-MOVE, over an
association of their own (`StoreAssociation`; a C-GET's go back on the requestor's
association: `sending_back`); what goes of each instance is `outgoing`'s to say.

pynetdicom's ``AE.associate()`` and ``send_c_store()`` take some 4 ms per instance (its
reactors poll, every command set goes through pydicom, every PDU through queues between two
threads), where Orthanc takes under 1 ms; and given a file, ``send_c_store`` decodes and
re-encodes its data set unless a global switch says otherwise. A C-MOVE's sub-association
only sends C-STORE requests and waits for each answer, so here it is one blocking socket in
the thread that serves the C-MOVE: pynetdicom's PDU classes encode the association request
and decode the answer, the C-STORE command sets are written and read by hand
(``transport/store_path.py``, which answers the receiver's C-STOREs the same way), and each
data set goes from the archived file to the socket (``sendfile``), untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import cast

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from services.receiver.outgoing import FileDataSet, Outgoing, proposals, what_to_send
from services.receiver.transport import StoreAnswer, decode_c_store_rsp, encode_c_store_rq

log = logging.getLogger("dcmdb.receiver.sending")

# The largest PDU we take: answers to C-STORE are a few dozen bytes.
MAXIMUM_PDU = 65536
_PDU_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")  # item length, context ID, message control header
_P_DATA_TF, _A_ASSOCIATE_AC, _A_ASSOCIATE_RJ, _A_RELEASE_RP, _A_ABORT = 0x04, 0x02, 0x03, 0x06, 0x07
_A_RELEASE_RQ_PDU = _PDU_HEADER.pack(0x05, 0, 4) + b"\0" * 4
_A_ABORT_PDU = _PDU_HEADER.pack(_A_ABORT, 0, 4) + b"\0" * 4  # source: service user
_COMMAND, _LAST = 0x01, 0x02


class DestinationUnreachable(Exception):
    """No association with the destination: the message says why, naming host and port."""


class AssociationLost(Exception):
    """The destination aborted, closed or stopped answering in the middle."""


class StoreAssociation:
    """An association we requested to send C-STOREs on, one at a time, from one thread."""

    def __init__(
        self,
        reader: _PduReader,
        ae_title: str,
        where: str,
        accepted: dict[tuple[str, str], int],
        peer_max: int,
    ) -> None:
        self._reader = reader
        self._sock = reader.sock
        self.ae_title = ae_title
        self.where = where  # "host:port", for messages
        self._accepted = accepted  # (SOP class, transfer syntax) -> context ID
        # Bytes of data set per PDV: what the peer's largest PDU holds beside the PDV header
        # (0: no limit).
        self._fragment = (peer_max or 1 << 20) - _PDV_HEADER.size
        self._open = True
        # The next instance, and what goes of it, found while the one before was sent
        self._ready: tuple[Outgoing, tuple[int, FileDataSet | bytes] | StoreAnswer] | None = None

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        kinds: Iterable[tuple[str, str]],
        *,
        connect_timeout: float,
        answer_timeout: float,
    ) -> StoreAssociation:
        """Connect and negotiate within `connect_timeout`; DestinationUnreachable with the
        reason when either fails. Each C-STORE's answer may then take `answer_timeout`."""
        where = f"{host}:{port}"
        offered = proposals(kinds)
        try:
            sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise DestinationUnreachable(f"cannot reach {where}: {_reason(exc)}") from None
        reader = _PduReader(sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(_association_request(calling_ae, called_ae, offered))
            pdu_type, pdu = reader.next()
        except (OSError, AssociationLost) as exc:
            sock.close()
            raise DestinationUnreachable(f"{where} did not answer: {_reason(exc)}") from None
        if pdu_type != _A_ASSOCIATE_AC:
            sock.close()
            raise DestinationUnreachable(f"{where} {_refusal(pdu_type, pdu)}")
        answer = A_ASSOCIATE_AC()
        try:
            answer.decode(pdu)
            accepted_answer = answer.to_primitive()
        except Exception:  # whatever pynetdicom finds wrong with it
            sock.close()
            raise DestinationUnreachable(f"{where} accepted in a malformed PDU") from None
        accepted = {}
        for result in accepted_answer.presentation_context_definition_results_list:
            context_id = cast(int, result.context_id)
            if result.result == 0 and 1 <= context_id <= 2 * len(offered) - 1 and context_id % 2:
                sop_class, _ = offered[context_id // 2]
                accepted[(sop_class, str(result.transfer_syntax[0]))] = context_id
        peer_max = accepted_answer.maximum_length_received or 0
        _kernel_timeouts(sock, answer_timeout)
        return cls(reader, called_ae, where, accepted, max(peer_max, 1024) if peer_max else 0)

    def send(
        self,
        instance: Outgoing,
        message_id: int,
        move_originator: tuple[str, int],
        meanwhile: Callable[[], None] = lambda: None,
    ) -> StoreAnswer:
        """C-STORE one instance and wait for its answer, calling `meanwhile` in between. A
        failure of ours (no context the destination accepted, a file gone or unreadable) is
        answered here, as a failure status with a comment, without sending;
        AssociationLost when the association ends."""
        chosen = self._chosen(instance)
        if isinstance(chosen, StoreAnswer):
            return chosen
        context_id, data = chosen
        command = encode_c_store_rq(
            message_id,
            instance.sop_class_uid,
            instance.sop_instance_uid,
            move_originator=move_originator,
        )
        try:
            self._send_message(context_id, command, data)
            meanwhile()
            answer = self._answer()
        except OSError as exc:
            self._open = False
            raise AssociationLost(f"{self.where}: {_reason(exc)}") from None
        finally:
            if isinstance(data, FileDataSet):
                data.file.close()
        if answer.message_id not in (None, message_id):
            self.abort()
            raise AssociationLost(f"{self.where} answered another request")
        return answer

    def ready(self, instance: Outgoing) -> None:
        """Find what to send of `instance`, the next to go, before it is sent."""
        self._discard_ready()
        self._ready = (instance, what_to_send(instance, self._accepted, self.ae_title))

    def release(self) -> None:
        """Release the association (or abort it, when the destination does not answer)."""
        self._discard_ready()
        if not self._open:
            return
        try:
            self._sock.sendall(_A_RELEASE_RQ_PDU)
            while (pdu_type := self._reader.next()[0]) not in (_A_RELEASE_RP, _A_ABORT):
                log.debug("ignoring a PDU of type 0x%02X while releasing", pdu_type)
        except (OSError, AssociationLost):
            pass
        self._close()

    def abort(self) -> None:
        self._discard_ready()
        if self._open:
            with contextlib.suppress(OSError):
                self._sock.sendall(_A_ABORT_PDU)
        self._close()

    def _chosen(self, instance: Outgoing) -> tuple[int, FileDataSet | bytes] | StoreAnswer:
        if self._ready is not None and self._ready[0] is instance:
            chosen, self._ready = self._ready[1], None
            return chosen
        return what_to_send(instance, self._accepted, self.ae_title)

    def _discard_ready(self) -> None:
        if self._ready is not None:
            _, chosen = self._ready
            self._ready = None
            if isinstance(chosen, tuple) and isinstance(chosen[1], FileDataSet):
                chosen[1].file.close()

    def _close(self) -> None:
        self._open = False
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _send_message(self, context_id: int, command: bytes, data: FileDataSet | bytes) -> None:
        """The command set in one PDV, the data set in as many as the peer's PDUs allow:
        from the file when it goes as stored, else from memory."""
        command_pdu = (
            _PDU_HEADER.pack(_P_DATA_TF, 0, len(command) + _PDV_HEADER.size)
            + _PDV_HEADER.pack(len(command) + 2, context_id, _COMMAND | _LAST)
            + command
        )
        if isinstance(data, bytes):
            self._send_fragments(
                context_id, len(data), command_pdu, lambda at, size: data[at : at + size]
            )
            return

        def from_file(at: int, size: int) -> None:
            socket_fd, file_fd = self._sock.fileno(), data.file.fileno()
            at += data.offset
            while size:
                sent = os.sendfile(socket_fd, file_fd, at, size)
                if not sent:
                    raise OSError("the archived file ended early")
                at, size = at + sent, size - sent

        self._send_fragments(context_id, data.length, command_pdu, from_file)

    def _send_fragments(
        self,
        context_id: int,
        length: int,
        before: bytes,
        piece: Callable[[int, int], bytes | None],
    ) -> None:
        """Send `length` bytes of data set as PDVs, each of what ``piece(start, size)``
        returns, or sends itself; `before` goes out with the first PDV's header."""
        start = 0
        while True:
            size = min(self._fragment, length - start)
            last = start + size == length
            self._sock.sendall(
                before
                + _PDU_HEADER.pack(_P_DATA_TF, 0, size + _PDV_HEADER.size)
                + _PDV_HEADER.pack(size + 2, context_id, _LAST if last else 0),
                socket.MSG_MORE if size else 0,  # the headers leave with the data they head
            )
            before = b""
            if size and (chunk := piece(start, size)) is not None:
                self._sock.sendall(chunk)
            start += size
            if last:
                return

    def _answer(self) -> StoreAnswer:
        """The C-STORE-RSP to the request just sent."""
        command = b""
        while True:
            pdu_type, pdu = self._reader.next()
            if pdu_type != _P_DATA_TF:
                self._open = False
                raise AssociationLost(f"{self.where} {_refusal(pdu_type, pdu)}")
            offset = _PDU_HEADER.size
            while offset + _PDV_HEADER.size <= len(pdu):
                length, _, control = _PDV_HEADER.unpack_from(pdu, offset)
                command += pdu[offset + _PDV_HEADER.size : offset + 4 + length]
                offset += 4 + length
                if control & _LAST:
                    if not control & _COMMAND or (answer := decode_c_store_rsp(command)) is None:
                        self.abort()
                        raise AssociationLost(f"{self.where} sent no C-STORE answer")
                    return answer


def _association_request(
    calling_ae: str, called_ae: str, offered: list[tuple[str, tuple[str, ...]]]
) -> bytes:
    request = A_ASSOCIATE()
    request.application_context_name = APPLICATION_CONTEXT_NAME
    request.calling_ae_title = calling_ae
    request.called_ae_title = called_ae
    for index, (sop_class, syntaxes) in enumerate(offered):
        context = PresentationContext()
        context.context_id = 2 * index + 1
        context.abstract_syntax = sop_class
        context.transfer_syntax = list(syntaxes)
        request.presentation_context_definition_list.append(context)
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = MAXIMUM_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    request.user_information = [maximum, implementation, version]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(request)
    return pdu.encode()


class _PduReader:
    """The peer's PDUs, read as they come: an answer is a few dozen bytes, so one recv
    brings it whole as a rule."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._inbox = bytearray()

    def next(self) -> tuple[int, bytes]:
        """(type, the whole PDU) of the next PDU; AssociationLost when the peer closed or
        sent more than we take."""
        self._fill(_PDU_HEADER.size)
        pdu_type, _, length = _PDU_HEADER.unpack_from(self._inbox)
        if length > MAXIMUM_PDU:
            raise AssociationLost(f"a PDU of {length} bytes, more than the {MAXIMUM_PDU} we take")
        end = _PDU_HEADER.size + length
        self._fill(end)
        pdu = bytes(self._inbox[:end])
        del self._inbox[:end]
        return pdu_type, pdu

    def _fill(self, size: int) -> None:
        while len(self._inbox) < size:
            chunk = self.sock.recv(MAXIMUM_PDU)
            if not chunk:
                raise AssociationLost("the connection was closed")
            self._inbox += chunk


def _refusal(pdu_type: int, pdu: bytes) -> str:
    if pdu_type == _A_ASSOCIATE_RJ:
        rejection = A_ASSOCIATE_RJ()
        rejection.decode(pdu)
        answer = rejection.to_primitive()
        return f"refused: {answer.reason_str}"
    if pdu_type == _A_ABORT:
        return "aborted"
    return f"sent an unexpected PDU (type 0x{pdu_type:02X})"


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """A blocking socket whose sends and receives give up after `seconds`: Python's own
    timeouts poll before every call, and ``socket.sendfile`` makes a selector each time,
    some 30 us per instance all told; here the kernel keeps the time (EAGAIN)."""
    sock.settimeout(None)
    whole = int(seconds)
    limit = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout | BlockingIOError):  # BlockingIOError:
        return "no answer in time"  # a kernel timeout (`_kernel_timeouts`)
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    return str(exc)

"""The C-FIND fast path: each match's response written by hand, many to a send.

pynetdicom 3.0.4's ``_c_find_scp`` encodes every response's command set and identifier
through pydicom, logs it and hands it to the DUL thread as a primitive: over 1 ms per
match, where a study-level C-FIND answers thousands. Here the association thread runs the
EVT_C_FIND handler itself, writes each response as one P-DATA-TF PDU (command and
identifier PDVs), gathers them and writes them to the socket some 64 KiB at a time, or
every 10 ms while matches come slowly (the first at once: a desktop shows it, or cancels).

The handler is bound as pynetdicom's (``evt.EVT_C_FIND``) and is called the same way (the
event's ``identifier``, ``is_cancelled``, ``context``); it yields ``(status, identifier)``
pairs where the identifier may be a pydicom Dataset (encoded by pynetdicom's ``encode``)
or ``bytes`` already encoded in the context's transfer syntax, and the status an int or a
Dataset with ``Status`` and an optional ``ErrorComment``. The statuses mean what they mean
upstream: pending ones carry a match and go on, any other ends the operation (with no
match); after the last match the final success is sent here. Only implicit and explicit
VR little endian are served here (what the receiver accepts for its query contexts); any
other context, or a C-FIND without a handler bound, goes upstream.
"""

from __future__ import annotations

import logging
import struct
import time
import traceback
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode

from services.receiver.transport.pdu_socket import PDU_HEADER, PDUSocket

if TYPE_CHECKING:  # pragma: no cover
    from services.receiver.transport.dul import EventDrivenDUL

LOGGER = logging.getLogger(__name__)

_C_FIND_RSP = 0x8020
_NO_DATA_SET, _DATA_SET = 0x0101, 0x0001
_SUCCESS, _HANDLER_FAILED, _ENCODING_FAILED = 0x0000, 0xC311, 0xC312
_PENDING = frozenset({0xFF00, 0xFF01})
_COMMAND_ELEMENT = struct.Struct("<HHL")
_PDV_HEADER = struct.Struct(">LBB")  # item length, context ID, message control header
_P_DATA_TF = 0x04
_LAST_COMMAND, _DATA, _LAST_DATA = 0x03, 0x00, 0x02
SEND_SIZE = 64 * 1024  # bytes of responses gathered into one write...
SEND_INTERVAL = 0.01  # ...or the seconds they may wait: the first goes at once
_EXPLICIT = {str(ExplicitVRLittleEndian): True, str(ImplicitVRLittleEndian): False}


def encode_c_find_rsp(
    sop_class_uid: str, message_id: int, status: int, has_identifier: bool, comment: str = ""
) -> bytes:
    """A C-FIND-RSP command set (implicit VR little endian, as every command set)."""
    elements: list[tuple[int, int | str]] = [
        (0x0002, sop_class_uid),
        (0x0100, _C_FIND_RSP),
        (0x0120, message_id),
        (0x0800, _DATA_SET if has_identifier else _NO_DATA_SET),
        (0x0900, status),
    ]
    if comment:
        elements.append((0x0902, comment))
    body = bytearray()
    for element, value in elements:
        if isinstance(value, int):
            encoded = struct.pack("<H", value)
        else:
            encoded = value.encode("ascii", "replace")
            encoded += (b"\0" if element == 0x0002 else b" ") * (len(encoded) % 2)
        body += _COMMAND_ELEMENT.pack(0, element, len(encoded)) + encoded
    return _COMMAND_ELEMENT.pack(0, 0x0000, 4) + struct.pack("<L", len(body)) + bytes(body)


class ResponseWriter:
    """The responses to one C-FIND request, gathered and written to the peer's socket."""

    def __init__(self, assoc: Association, context_id: int, request: C_FIND) -> None:
        self._assoc = assoc
        self._context_id = context_id
        self._sop_class = str(request.AffectedSOPClassUID)
        self._message_id = cast(int, request.MessageID)
        peer_maximum = assoc.requestor.maximum_length or 0
        # What one PDV may carry: the peer's maximum PDU length less the PDV's header.
        self._pdv_limit = (peer_maximum or 1 << 30) - _PDV_HEADER.size
        self._buffer = bytearray()
        self._sent_at = 0.0  # monotonic time of the last write

    def send(self, status: int, identifier: bytes | None, comment: str = "") -> None:
        command = encode_c_find_rsp(
            self._sop_class, self._message_id, status, identifier is not None, comment
        )
        pdvs = [(_LAST_COMMAND, command)]
        if identifier is not None:
            size = self._pdv_limit
            for start in range(0, max(len(identifier), 1), size):
                last = start + size >= len(identifier)
                pdvs.append((_LAST_DATA if last else _DATA, identifier[start : start + size]))
        self._add_pdus(pdvs)
        if (
            len(self._buffer) >= SEND_SIZE
            or status not in _PENDING
            or time.monotonic() - self._sent_at >= SEND_INTERVAL
        ):
            self.flush()

    def _add_pdus(self, pdvs: list[tuple[int, bytes]]) -> None:
        """PDVs into PDUs: as many in each as the peer's maximum length takes."""
        pdu = bytearray()
        for control, data in pdvs:
            item = _PDV_HEADER.pack(len(data) + 2, self._context_id, control) + data
            if pdu and len(pdu) + len(item) > self._pdv_limit + _PDV_HEADER.size:
                self._buffer += PDU_HEADER.pack(_P_DATA_TF, 0, len(pdu)) + pdu
                pdu = bytearray()
            pdu += item
        self._buffer += PDU_HEADER.pack(_P_DATA_TF, 0, len(pdu)) + pdu

    def flush(self) -> None:
        if not self._buffer:
            return
        dul = cast("EventDrivenDUL", self._assoc.dul)
        cast(PDUSocket, dul.socket).send_all(bytes(self._buffer))
        self._buffer.clear()
        self._sent_at = time.monotonic()
        dul._idle_timer.restart()  # sending is activity, as a PDU the DUL sends


def serve_find(assoc: Association, request: C_FIND, context_id: int) -> bool:
    """Serve a C-FIND request here, in the association thread; False when it is not ours
    (no handler bound, or a transfer syntax other than implicit or explicit VR LE)."""
    context = assoc._accepted_cx.get(context_id)
    handler = assoc.get_handlers(evt.EVT_C_FIND)
    if (
        context is None
        or not isinstance(handler, tuple)
        or handler[0] is None
        or handler[0] is evt._c_find_handler  # pynetdicom's default: no handler bound
        or str(context.transfer_syntax[0]) not in _EXPLICIT
    ):
        return False
    explicit = _EXPLICIT[str(context.transfer_syntax[0])]
    service = assoc.dimse  # C-CANCEL requests land in its cancel_req (by message ID)

    def is_cancelled(message_id: int) -> bool:
        return service.cancel_req.pop(message_id, None) is not None

    event = evt.Event(
        assoc,
        evt.EVT_C_FIND,
        {"request": request, "context": context.as_tuple, "_is_cancelled": is_cancelled},
    )
    writer = ResponseWriter(assoc, context_id, request)
    try:
        for status, identifier in handler[0](event, *(handler[1] or [])):
            if not assoc.is_established:
                return True
            if not _respond(writer, status, identifier, explicit):
                return True
    except Exception as exc:
        LOGGER.error(
            "Exception in handler bound to 'evt.EVT_C_FIND'\n%s",
            "".join(traceback.format_exception(exc)),
        )
        writer.send(_HANDLER_FAILED, None)
        return True
    if assoc.is_established:
        writer.send(_SUCCESS, None)
    return True


def _respond(writer: ResponseWriter, status: Any, identifier: Any, explicit: bool) -> bool:
    """Send one of the handler's answers; False when it ended the operation."""
    comment = ""
    if isinstance(status, Dataset):
        comment = str(status.get("ErrorComment", "") or "")
        status = int(status.Status)
    if status not in _PENDING:
        writer.send(int(status), None, comment)
        return False
    if isinstance(identifier, Dataset):
        encoded = encode(identifier, not explicit, True)
        if not encoded:
            LOGGER.error("Failed encoding the response 'Identifier' dataset")
            writer.send(_ENCODING_FAILED, None)
            return False
        identifier = encoded
    elif isinstance(identifier, BytesIO):
        identifier = identifier.getvalue()
    writer.send(int(status), bytes(identifier))
    return True

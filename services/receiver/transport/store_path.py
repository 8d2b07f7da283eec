"""The C-STORE fast path: C-STORE requests in and their responses out without pydicom.

pynetdicom 3.0.4 decodes every command set into a pydicom Dataset and a validated
primitive, hands the request from the DUL thread to the association thread and
back, and encodes the response the same way: about 0.7 ms of each C-STORE. Here a
C-STORE-RQ's command set is read by hand, its handler runs in the DUL thread and
the response is written by hand.

Only C-STORE requests whose command set we fully understand take this path. Any
other command (C-ECHO, C-FIND, C-MOVE, C-GET, C-CANCEL, N-*, a C-STORE response
on a C-GET association), or a C-STORE-RQ with anything unusual, is replayed
unchanged to pynetdicom's own ``DIMSEServiceProvider.receive_primitive`` and
served by its service classes and whatever handler is bound.

The pending answers of C-MOVE and C-GET (one per sub-operation) are written by hand
too, and so are the C-STORE requests a C-MOVE sends and the answers it reads
(`services.receiver.sending`): each command set dcmdb writes without pydicom is
written here, checked against pynetdicom's encoding by the transport's tests.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass

from shared.dimse_status import CANNOT_UNDERSTAND_OTHER

if TYPE_CHECKING:  # pragma: no cover
    from services.receiver.transport.dul import EventDrivenDUL

LOGGER = logging.getLogger(__name__)

_COMMAND_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian
# C-STORE-RQ command elements -> (primitive attribute, VR); None: checked or ignored
_STORE_RQ_FIELDS: dict[int, tuple[str, str] | None] = {
    0x0000: None, 0x0100: None, 0x0800: None,  # group length, command, data set type
    0x0002: ("AffectedSOPClassUID", "UI"), 0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x0110: ("MessageID", "US"), 0x0700: ("Priority", "US"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}  # fmt: skip
_C_STORE_RQ = b"\x01\x00"  # CommandField 0x0001, little endian
_NO_DATA_SET = b"\x01\x01"  # CommandDataSetType 0x0101
_C_STORE_RSP = 0x8001
_C_GET_RSP, _C_MOVE_RSP = 0x8010, 0x8021


def _command_elements(command: bytes) -> dict[int, bytes] | None:
    """The (0000,eeee) elements of an implicit VR little endian command set by element
    number; None when it is not one (another group, a length running past the end)."""
    elements, offset = {}, 0
    while offset + 8 <= len(command):
        group, element, length = _COMMAND_ELEMENT.unpack_from(command, offset)
        elements[element] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
        if group != 0:
            return None
    return elements if offset == len(command) else None


def decode_c_store_rq(command: bytes) -> C_STORE | None:
    """The C-STORE-RQ primitive pynetdicom would decode from `command`.

    ``None`` for other commands and anything unusual (unknown elements, odd
    lengths, values the primitive's validating setters refuse): the caller
    hands those to pynetdicom, to decode or reject as it always has.
    """
    elements = _command_elements(command)
    if elements is None or not elements.keys() <= _STORE_RQ_FIELDS.keys():
        return None
    if elements.get(0x0100) != _C_STORE_RQ or elements.get(0x0800, _NO_DATA_SET) == _NO_DATA_SET:
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


def _command_set(elements: list[tuple[int, int | bytes | None]]) -> bytes:
    """A command set of (element, value) pairs in element order, as pynetdicom encodes
    it: an int is a US, bytes are the value padded to even length; None is left out
    (pynetdicom omits unset parameters); the group length comes first."""
    body = b""
    for element, value in elements:
        if value is None:
            continue
        encoded = struct.pack("<H", value) if isinstance(value, int) else value
        body += _COMMAND_ELEMENT.pack(0, element, len(encoded)) + encoded
    return _COMMAND_ELEMENT.pack(0, 0x0000, 4) + struct.pack("<L", len(body)) + body


def _uid(value: str | None) -> bytes | None:
    """A UID's value: padded with NUL."""
    if value is None:
        return None
    encoded = value.encode("ascii")
    return encoded + b"\0" * (len(encoded) % 2)


def encode_c_store_rsp(rsp: C_STORE) -> bytes | None:
    """The command set pynetdicom would encode for `rsp`; ``None`` if it has
    the (rare) optional status elements or a UID that is not ASCII (a request
    pynetdicom decoded, echoed back), which are left to pynetdicom."""
    if rsp.OffendingElement is not None or rsp.ErrorComment is not None:
        return None
    uids = (rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID)
    if not all(uid is None or uid.isascii() for uid in uids):
        return None
    return _command_set(
        [
            (0x0002, _uid(rsp.AffectedSOPClassUID)),
            (0x0100, _C_STORE_RSP),  # CommandField
            (0x0120, rsp.MessageIDBeingRespondedTo),
            (0x0800, 0x0101),  # CommandDataSetType: none
            (0x0900, rsp.Status),
            (0x1000, _uid(rsp.AffectedSOPInstanceUID)),
        ]
    )


def encode_retrieve_rsp(rsp: C_MOVE | C_GET) -> bytes | None:
    """The command set pynetdicom would encode for a C-MOVE or C-GET response; ``None``
    for one with an identifier (a final answer's Failed SOP Instance UID List) or text
    that is not ASCII, which are left to pynetdicom."""
    comment = rsp.ErrorComment
    if rsp.Identifier is not None or not (comment is None or comment.isascii()):
        return None
    if not (rsp.AffectedSOPClassUID is None or rsp.AffectedSOPClassUID.isascii()):
        return None
    text = None
    if comment is not None:
        text = comment.encode("ascii")
        text += b" " * (len(text) % 2)  # LO: padded with a space
    return _command_set(
        [
            (0x0002, _uid(rsp.AffectedSOPClassUID)),
            (0x0100, _C_MOVE_RSP if isinstance(rsp, C_MOVE) else _C_GET_RSP),
            (0x0120, rsp.MessageIDBeingRespondedTo),
            (0x0800, 0x0101),  # CommandDataSetType: none
            (0x0900, rsp.Status),
            (0x0902, text),
            (0x1020, rsp.NumberOfRemainingSuboperations),
            (0x1021, rsp.NumberOfCompletedSuboperations),
            (0x1022, rsp.NumberOfFailedSuboperations),
            (0x1023, rsp.NumberOfWarningSuboperations),
        ]
    )


def encode_c_store_rq(
    message_id: int,
    sop_class_uid: str,
    sop_instance_uid: str,
    *,
    priority: int = 0,
    move_originator: tuple[str, int] | None = None,
) -> bytes:
    """The command set of a C-STORE-RQ with a data set, as pynetdicom encodes one: for
    the sub-operations of a C-MOVE, `move_originator` is the (AE title, message ID) of
    the C-MOVE request."""
    originator_ae, originator_id = move_originator or (None, None)
    ae_title = None
    if originator_ae is not None:
        ae_title = originator_ae.encode("ascii")
        ae_title += b" " * (len(ae_title) % 2)  # AE: padded with a space
    return _command_set(
        [
            (0x0002, _uid(sop_class_uid)),
            (0x0100, 0x0001),  # CommandField: C-STORE-RQ
            (0x0110, message_id),
            (0x0700, priority),
            (0x0800, 0x0001),  # CommandDataSetType: a data set follows (not 0x0101)
            (0x1000, _uid(sop_instance_uid)),
            (0x1030, ae_title),
            (0x1031, originator_id),
        ]
    )


@dataclass(frozen=True)
class StoreAnswer:
    """A C-STORE-RSP as a sender reads it."""

    message_id: int | None  # the request it answers
    status: int
    error_comment: str | None


def decode_c_store_rsp(command: bytes) -> StoreAnswer | None:
    """A C-STORE-RSP's answer; None when `command` is not one (or has no status)."""
    elements = _command_elements(command)
    if elements is None or elements.get(0x0100) != struct.pack("<H", _C_STORE_RSP):
        return None
    try:
        (status,) = struct.unpack("<H", elements[0x0900])
        answered = elements.get(0x0120)
        message_id = None if answered is None else struct.unpack("<H", answered)[0]
    except (KeyError, struct.error):
        return None
    comment = elements.get(0x0902)
    text = None if comment is None else comment.decode("latin-1").strip(" \0")
    return StoreAnswer(message_id, status, text)


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

    Overrides ``DIMSEServiceProvider``: upstream, ``receive_primitive`` feeds every
    P-DATA to a ``DIMSEMessage`` that decodes the command set with pydicom, and
    ``send_msg`` encodes every response the same way. Here C-STORE requests and
    responses skip that; everything else calls the upstream methods unchanged.
    EVT_DIMSE_RECV/SENT hand out the pydicom-based messages skipped here, so the
    fast paths run only while nobody listens to those events.
    """

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._command = bytearray()  # command fragments received so far
        self._request: C_STORE | None = None  # a C-STORE-RQ awaiting its data set
        self._data = BytesIO()

    def receive_primitive(self, primitive: P_DATA) -> None:
        # Upstream: decode into ``self.message``. Here: the PDVs go through the same
        # sorting as those the DUL hands over without building a primitive.
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
                if self._request is None:  # not ours: replay the rest to pynetdicom
                    replay = [(context_id, b"\x03" + command), *pdvs[index + 1 :]]
                    super().receive_primitive(_p_data(replay))
                    return
                self._request._context_id = context_id
            elif self._request is not None and not is_command:
                self._data.write(memoryview(pdv)[1:])
                if is_last:
                    request, self._request = self._request, None
                    request.DataSet, self._data = self._data, BytesIO()
                    if not serve_store(self.assoc, request):
                        self.msg_queue.put((cast(int, request._context_id), request))
            else:  # a command inside a data set or vice versa: framing is broken
                LOGGER.error("Received a DIMSE fragment out of order")
                self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
                return

    def send_msg(self, primitive: Any, context_id: int) -> None:
        # Upstream encodes through pydicom and queues a P-DATA primitive per
        # fragment. A C-STORE-RSP, or a C-MOVE or C-GET response without an
        # identifier (the pending ones after each sub-operation), that fits one PDU
        # is written by hand instead; every other message is upstream's.
        command = None
        responding = getattr(primitive, "MessageIDBeingRespondedTo", None) is not None
        if responding and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            if type(primitive) is C_STORE:
                command = encode_c_store_rsp(primitive)
            elif type(primitive) in (C_MOVE, C_GET):
                command = encode_retrieve_rsp(primitive)
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


def serve_store(assoc: Association, request: C_STORE) -> bool:
    """Run the C-STORE handler here, in the DUL thread, and send its response.

    Upstream queues the request for the association thread, whose
    ``StorageServiceClass.SCP`` calls the handler and builds and re-validates a
    response primitive: a third of the cost of an instance. False when this
    request is not ours to serve that way: upstream then serves it as ever.
    """
    context_id = cast(int, request._context_id)
    context = assoc._accepted_cx.get(context_id)
    handler = assoc.get_handlers(evt.EVT_C_STORE)
    if (
        context is None
        or not assoc.is_established
        or not isinstance(handler, tuple)
        or handler[0] is None
        or handler[0] is evt._c_store_handler  # pynetdicom's default: no handler bound
        or assoc.get_handlers(evt.EVT_DIMSE_SENT)
        or _config.UNRESTRICTED_STORAGE_SERVICE
    ):
        return False
    event = evt.Event(assoc, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})
    try:
        status = handler[0](event, *(handler[1] or []))
    except Exception:
        LOGGER.exception("Exception in handler bound to 'evt.EVT_C_STORE'")
        status = CANNOT_UNDERSTAND_OTHER  # as upstream's StorageServiceClass answers
    if not isinstance(status, int):
        return _respond_slowly(assoc, request, context_id, status)
    response = _StoreResponse(
        request.AffectedSOPClassUID, request.MessageID, status, request.AffectedSOPInstanceUID
    )
    command = encode_c_store_rsp(response)  # type: ignore[arg-type]
    cast("EventDrivenDUL", assoc.dul).send_command(context_id, cast(bytes, command))
    return True


def _respond_slowly(assoc: Association, request: C_STORE, context_id: int, status: Any) -> bool:
    """A handler that answered with a status Dataset: pynetdicom builds that response."""
    response = C_STORE()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    response = StorageServiceClass(assoc).validate_status(status, response)
    assoc.dimse.send_msg(response, context_id)
    return True

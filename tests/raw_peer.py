"""A DICOM peer on a raw socket: every PDU built by hand, so that it can send any bytes.

pynetdicom and DCMTK refuse to send what they would not accept; a hostile peer does not.
``RawAssociation`` speaks just enough of PS3.8 (association, P-DATA, release) to put an
exact data set or an exact broken PDU in front of the receiver and read what comes back.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tests.mutations import LengthField

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATA_SET, DATA_SET = 0x0101, 0x0000
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07
COMMAND, LAST = 0x01, 0x02  # message control header bits
_HEADER = struct.Struct(">BBL")


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid_item(kind: int, uid: str) -> bytes:
    return _item(kind, uid.encode("ascii"))


def pdu(kind: int, body: bytes) -> bytes:
    return _HEADER.pack(kind, 0, len(body)) + body


def associate_rq(
    contexts: Sequence[tuple[int, str | None, Sequence[str]]],
    *,
    called: str = "DCMDB",
    calling: str = "FUZZSCU",
    max_pdu: int = 16384,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing (context ID, abstract syntax, transfer syntaxes); an
    abstract syntax of None leaves its sub-item out."""
    body = struct.pack(">HH16s16s32s", 1, 0, called.encode().ljust(16), calling.encode().ljust(16),
                       b"")  # fmt: skip
    body += _uid_item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract, syntaxes in contexts:
        sub_items = _uid_item(0x30, abstract) if abstract is not None else b""
        sub_items += b"".join(_uid_item(0x40, syntax) for syntax in syntaxes)
        body += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub_items)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _uid_item(0x52, "1.2.826.0.1.3680043.8.498")
    body += _item(0x50, user + _item(0x55, b"DCMDB_FUZZ"))
    return pdu(A_ASSOCIATE_RQ, body)


def p_data(pdvs: Sequence[tuple[int, int, bytes]]) -> bytes:
    """A P-DATA-TF of (context ID, message control header, fragment) values."""
    body = b"".join(struct.pack(">LBB", len(data) + 2, cid, ctl) + data for cid, ctl, data in pdvs)
    return pdu(P_DATA_TF, body)


RELEASE_RQ = pdu(A_RELEASE_RQ, b"\0" * 4)
ABORT = pdu(A_ABORT, b"\0\0\0\0")


def command_set(*elements: tuple[int, bytes]) -> bytes:
    """Group 0000 in implicit VR little endian, with its group length first."""
    body = b"".join(struct.pack("<HHL", 0, tag, len(value)) + value for tag, value in elements)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return command_set(
        (0x0002, _ui(sop_class)),
        (0x0100, _us(C_STORE_RQ)),
        (0x0110, _us(message_id)),
        (0x0700, _us(0)),
        (0x0800, _us(DATA_SET)),
        (0x1000, _ui(sop_instance)),
    )


def c_echo_rq(message_id: int) -> bytes:
    return command_set(
        (0x0002, _ui(VERIFICATION)),
        (0x0100, _us(C_ECHO_RQ)),
        (0x0110, _us(message_id)),
        (0x0800, _us(NO_DATA_SET)),
    )


def fragments(context_id: int, control: int, data: bytes, max_pdu: int) -> list[bytes]:
    """`data` as P-DATA-TFs of at most `max_pdu` bytes (the peer's maximum), last bit set
    on the last fragment."""
    size = max(1, max_pdu - 6)
    chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [
        p_data([(context_id, control | (LAST if i == len(chunks) - 1 else 0), chunk)])
        for i, chunk in enumerate(chunks)
    ]


def pdu_length_fields(raw: bytes) -> list[LengthField]:
    """The length fields of a well-formed PDU built here: the PDU's, its items' and sub-items',
    and within P-DATA each PDV's and each command element's."""
    fields = [LengthField(2, 4, "big")]
    kind = raw[0]
    if kind in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        offset = 6 + 68
        while offset + 4 <= len(raw):
            item_kind, length = raw[offset], struct.unpack_from(">H", raw, offset + 2)[0]
            fields.append(LengthField(offset + 2, 2, "big"))
            first = offset + (8 if item_kind in (0x20, 0x21) else 4)
            sub = first if item_kind in (0x20, 0x21, 0x50) else offset + 4 + length
            while sub + 4 <= offset + 4 + length:
                fields.append(LengthField(sub + 2, 2, "big"))
                sub += 4 + struct.unpack_from(">H", raw, sub + 2)[0]
            offset += 4 + length
    elif kind == P_DATA_TF:
        offset = 6
        while offset + 6 <= len(raw):
            (length,) = struct.unpack_from(">L", raw, offset)
            fields.append(LengthField(offset, 4, "big"))
            if raw[offset + 5] & COMMAND:
                fields += command_length_fields(raw[offset + 6 : offset + 4 + length], offset + 6)
            offset += 4 + length
    return fields


def command_length_fields(command: bytes, base: int = 0) -> list[LengthField]:
    fields, offset = [], 0
    while offset + 8 <= len(command):
        fields.append(LengthField(base + offset + 4, 4, "little"))
        offset += 8 + struct.unpack_from("<L", command, offset + 4)[0]
    return fields


def read_pdus(sock: socket.socket, timeout: float) -> Iterator[tuple[int, bytes]]:
    """(PDU type, body) of each PDU the peer sends, until it closes the connection.

    TimeoutError when it neither sends nor closes for `timeout` seconds.
    """
    sock.settimeout(timeout)
    buffer = b""
    while True:
        while len(buffer) >= 6:
            kind, _, length = _HEADER.unpack_from(buffer)
            if len(buffer) < 6 + length:
                break
            yield kind, buffer[6 : 6 + length]
            buffer = buffer[6 + length :]
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return
        if not chunk:
            return
        buffer += chunk


def response_of(body: bytes) -> tuple[int, int] | None:
    """(Command Field, Status) of a P-DATA-TF that carries a whole response command set."""
    command, offset = b"", 0
    while offset + 6 <= len(body):
        (length,) = struct.unpack_from(">L", body, offset)
        if body[offset + 5] & COMMAND:
            command += body[offset + 6 : offset + 4 + length]
        offset += 4 + length
    values, offset = {}, 0
    while offset + 8 <= len(command):
        _, tag, length = struct.unpack_from("<HHL", command, offset)
        if length == 2:
            values[tag] = int(struct.unpack_from("<H", command, offset + 8)[0])
        offset += 8 + length
    if 0x0100 in values and 0x0900 in values:
        return values[0x0100], values[0x0900]
    return None


@dataclass
class Accepted:
    """What the receiver agreed to in its A-ASSOCIATE-AC."""

    contexts: dict[int, str] = field(default_factory=dict)  # context ID -> transfer syntax
    max_pdu: int = 0  # 0: unlimited


def parse_associate_ac(body: bytes) -> Accepted:
    accepted, offset = Accepted(), 68
    while offset + 4 <= len(body):
        kind, length = body[offset], struct.unpack_from(">H", body, offset + 2)[0]
        value = body[offset + 4 : offset + 4 + length]
        if kind == 0x21 and value[2] == 0 and len(value) >= 8:  # acceptance
            syntax_length = struct.unpack_from(">H", value, 6)[0]
            accepted.contexts[value[0]] = value[8 : 8 + syntax_length].decode().rstrip("\0")
        elif kind == 0x50 and value[:1] == b"\x51":
            accepted.max_pdu = struct.unpack_from(">L", value, 4)[0]
        offset += 4 + length
    return accepted


class RawAssociation:
    """An association with the receiver that sends exactly the bytes it is given."""

    def __init__(self, port: int, contexts: Sequence[tuple[int, str, Sequence[str]]],
                 *, timeout: float = 30.0, calling: str = "RAWSCU") -> None:  # fmt: skip
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.sock.sendall(associate_rq(contexts, calling=calling))
        self._pdus = read_pdus(self.sock, timeout)
        kind, body = next(self._pdus)
        if kind != A_ASSOCIATE_AC:
            self.sock.close()
            raise ConnectionRefusedError(f"association not accepted (PDU type {kind:#04x})")
        self.accepted = parse_associate_ac(body)

    def __enter__(self) -> RawAssociation:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def request(self, context_id: int, command: bytes, data_set: bytes | None = None) -> int:
        """Send one request; the status of its response."""
        max_pdu = self.accepted.max_pdu or 1 << 20
        pdus = fragments(context_id, COMMAND, command, max_pdu)
        if data_set is not None:
            pdus += fragments(context_id, 0, data_set, max_pdu)
        self.sock.sendall(b"".join(pdus))
        for kind, body in self._pdus:
            if kind == P_DATA_TF and (response := response_of(body)) is not None:
                return response[1]
            if kind != P_DATA_TF:
                break
        raise ConnectionError("no response: the association ended")

    def store(self, context_id: int, sop_class: str, sop_instance: str, data_set: bytes) -> int:
        return self.request(context_id, c_store_rq(1, sop_class, sop_instance), data_set)

    def echo(self, context_id: int) -> int:
        return self.request(context_id, c_echo_rq(1))

    def release(self) -> None:
        self.sock.sendall(RELEASE_RQ)
        for kind, _body in self._pdus:
            if kind in (A_RELEASE_RP, A_ABORT):
                break
        self.sock.close()

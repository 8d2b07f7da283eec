"""Reading whole PDUs from the peer into one reused buffer, within a deadline."""

from __future__ import annotations

import contextlib
import math
import socket
import struct
import threading
import time
from typing import cast

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

#: The largest PDU DCMTK's storescu sends; larger ones save little.
DEFAULT_MAXIMUM_PDU_SIZE = 128 * 1024
#: Largest PDU accepted before the association is accepted: an A-ASSOCIATE-RQ with
#: 128 presentation contexts and a user identity fits easily; more is hostile.
MAX_PRE_ASSOCIATION_PDU = 256 * 1024
PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length of what follows


class PDUSocket(AssociationSocket):
    """An ``AssociationSocket`` that reads whole PDUs into one reused buffer.

    Upstream's DUL reads through ``AssociationSocket.recv``, which allocates and
    extends a bytearray 4 KiB at a time, with no limit on the length a peer
    announces and no bound on how long a PDU may take to arrive. ``fill`` reads
    with ``recv_into`` straight into a buffer sized for the negotiated maximum,
    under a deadline the DUL sets before each PDU.
    """

    def __init__(self, assoc: Association, client_socket: socket.socket, capacity: int) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.capacity = capacity  # largest PDU body that fits
        self._view = memoryview(bytearray(PDU_HEADER.size + capacity))
        # Sends (our responses) wait at most the network timeout for the peer.
        self._send_timeout = assoc.network_timeout
        client_socket.settimeout(self._send_timeout)
        # When the PDU being read must be whole (set before each PDU); the network
        # (idle) timeout bounds the time between PDUs. A peer trickling a byte at
        # a time would keep each recv short but never finish.
        self.deadline = math.inf
        # The DUL thread sends, and the association thread does too while it streams
        # C-FIND responses (find_path): a PDU is written whole before another starts.
        self._send_lock = threading.Lock()

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
        # Upstream's send as it is, after restoring the send timeout: what is left
        # of a read's deadline is no bound for a send. Reset here, once per
        # response, rather than after every read.
        with self._send_lock:
            if (sock := self.socket) is not None:
                sock.settimeout(self._send_timeout)
            super().send(bytestream)

    def send_all(self, data: bytes) -> None:
        """Write whole PDUs from any thread (no EVT_DATA_SENT: the caller encoded them);
        OSError (the peer went away, or did not read for the network timeout) propagates."""
        with self._send_lock:
            sock = cast(socket.socket, self.socket)
            sock.settimeout(self._send_timeout)
            sock.sendall(data)

    def pdu(self, body_length: int) -> memoryview:
        """The PDU last read with :meth:`fill`, valid until the next read."""
        return self._view[: PDU_HEADER.size + body_length]

    def _shutdown_socket(self) -> None:
        # Upstream skips close() when shutdown() fails (a peer that reset),
        # leaving the fd to the garbage collector; we always close it.
        if (sock := self.socket) is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

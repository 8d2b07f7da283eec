"""Who gets a connection to the receiver, and how a connection starts.

Every connection costs two threads and a PDU buffer, from the moment it is
accepted until the peer releases or a timeout ends it; peers that connect and
then say nothing, or trickle a byte at a time, would otherwise pile them up.
So connections are counted, in total and per peer host, when they are
accepted: one over either limit is answered at once with an A-ASSOCIATE-RJ
(rejected-transient, local limit exceeded: a PACS tries again later) and
closed, before any thread is started for it.

pynetdicom's server runs the TLS handshake in its accept loop, so one client
that opens a connection and stays silent stops every other handshake. Here the
handshake runs in the connection's own thread, bounded by the ACSE timeout.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from typing import Any, cast

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: PDU type 3, length 4; result 2 (rejected-transient), source 3
# (service provider, presentation related), reason 2 (local limit exceeded).
LIMIT_EXCEEDED_RJ = bytes((0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02))
#: At most one warning per host this often: a flood must not flood the log.
_WARN_EVERY = 10.0


class Slot:
    """One admitted connection; ``release`` gives its place back, once."""

    def __init__(self, admission: Admission, host: str) -> None:
        self._admission = admission
        self.host = host
        self._released = False

    def release(self) -> None:
        with self._admission.lock:
            if not self._released:
                self._released = True
                self._admission.open[self.host] -= 1
                self._admission.total -= 1


class Admission:
    """Open connections in total and per host, against their limits."""

    def __init__(self, total: int, per_host: int) -> None:
        self.limit_total = total
        self.limit_per_host = per_host
        self.lock = threading.Lock()
        self.open: Counter[str] = Counter()
        self.total = 0
        self._warned: dict[str, float] = {}

    def admit(self, host: str) -> Slot | None:
        with self.lock:
            if self.total >= self.limit_total or self.open[host] >= self.limit_per_host:
                self._warn(host)
                return None
            self.open[host] += 1
            self.total += 1
        return Slot(self, host)

    def _warn(self, host: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(host, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[host] = now
            log.warning(
                "refusing a connection from %s: %d open from that host (limit %d), "
                "%d in all (limit %d)",
                host,
                self.open[host],
                self.limit_per_host,
                self.total,
                self.limit_total,
            )


class StorageServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with admission limits and the TLS handshake
    moved off the accept loop. Set ``admission`` and ``handshake_timeout``
    after construction (``AE.make_server`` builds it)."""

    admission: Admission
    handshake_timeout: float = 30.0
    slots: dict[Any, Slot]
    # socketserver's 5 lets a burst of connections overflow the accept queue,
    # where they are dropped unanswered instead of being admitted or refused.
    request_queue_size = 128

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = cast(socket.socket, self.socket).accept()
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        slot = self.admission.admit(str(client_address[0]))
        if slot is None:
            _refuse(request)
            return False
        self.slots[request] = slot
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError) as exc:  # includes a handshake that timed out
            log.info("connection from %s ended before its association: %s", client_address[0], exc)
            self._end(request)
        except Exception:
            self.handle_error(request, client_address)
            self._end(request)

    def take_slot(self, request: Any) -> Slot | None:
        """The slot of an accepted connection, for its association to release."""
        return self.slots.pop(request, None)

    def _end(self, request: Any) -> None:
        if (slot := self.take_slot(request)) is not None:
            slot.release()
        self.shutdown_request(request)


def _refuse(request: socket.socket) -> None:
    """Answer A-ASSOCIATE-RJ without reading the request; the server closes it."""
    if isinstance(request, ssl.SSLSocket):
        return  # no handshake yet: nothing can be said, only closed
    with contextlib.suppress(OSError):
        request.setblocking(False)
        request.send(LIMIT_EXCEEDED_RJ)

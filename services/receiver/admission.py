"""Who gets a connection to the receiver, and how a connection starts.

Every connection costs two threads and a PDU buffer, from the moment it is
accepted until the peer releases or a timeout ends it; peers that connect and
then say nothing, or trickle a byte at a time, would otherwise pile them up.
So connections are counted, in total and per peer host, when they are
accepted. One over either limit gets no thread of its own: a single lingerer
thread answers its request, as soon as the first bytes arrive, with an
A-ASSOCIATE-RJ (rejected-transient, local limit exceeded: a PACS tries again
later) and closes it within seconds.

pynetdicom's server runs the TLS handshake in its accept loop, so one client
that opens a connection and stays silent stops every other handshake. Here the
handshake runs in the connection's own thread, bounded by the ACSE timeout.
"""

from __future__ import annotations

import contextlib
import logging
import select
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
    refused: set[Any]
    services: dict[type, Any]  # see transport/reactor.py: requests the server serves itself
    lingerer: _Lingerer
    # socketserver's 5 lets a burst of connections overflow the accept queue,
    # where they are dropped unanswered instead of being admitted or refused.
    request_queue_size = 128

    def server_activate(self) -> None:
        super().server_activate()
        self.lingerer = _Lingerer()
        self.lingerer.start()  # with the server, so that a flood does not change the thread count

    def server_close(self) -> None:
        super().server_close()
        # Not there when binding failed (the port is taken): that error is the one to show.
        if (lingerer := getattr(self, "lingerer", None)) is not None:
            lingerer.stop()

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
            if not isinstance(request, ssl.SSLSocket):  # no handshake yet: only closed
                self.refused.add(request)
                with contextlib.suppress(OSError):
                    self.lingerer.keep(request.dup())
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

    def shutdown_request(self, request: Any) -> None:
        if request in self.refused:  # the lingerer answers and ends it
            self.refused.discard(request)
            self.close_request(request)
            return
        super().shutdown_request(request)

    def take_slot(self, request: Any) -> Slot | None:
        """The slot of an accepted connection, for its association to release."""
        return self.slots.pop(request, None)

    def _end(self, request: Any) -> None:
        if (slot := self.take_slot(request)) is not None:
            slot.release()
        self.shutdown_request(request)


class _Lingerer:
    """Refused connections: each is answered A-ASSOCIATE-RJ when its first bytes
    arrive, then read and discarded until the peer closes, and closed after a few
    seconds at most. One thread for all of them, and a bound on how many it holds."""

    def __init__(self, seconds: float = 3.0, most: int = 256) -> None:
        self._seconds, self._most = seconds, most
        self._lock = threading.Lock()
        self._held: dict[socket.socket, float] = {}
        self._answered: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def keep(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._held) >= self._most:
                sock.close()
                return
            sock.setblocking(False)
            self._held[sock] = time.monotonic() + self._seconds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lingerer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            for sock in self._held:
                sock.close()
            self._held.clear()

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                held = list(self._held)
            if not held:
                self._stopping.wait(0.1)
                continue
            readable, _, _ = select.select(held, [], [], 0.1)
            now = time.monotonic()
            for sock in held:
                done = now >= self._held[sock]
                if sock in readable and not done:
                    done = self._read(sock)
                if done:
                    with self._lock:
                        del self._held[sock]
                        self._answered.discard(sock)
                    sock.close()

    def _read(self, sock: socket.socket) -> bool:
        """Discard what arrived, answering the first of it; True once the peer is gone."""
        try:
            if not sock.recv(65536):
                return True
            if sock not in self._answered:
                self._answered.add(sock)
                sock.send(LIMIT_EXCEEDED_RJ)
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            return True
        return False

"""A lab's webhook receiver, for real: an HTTP server on a port of 127.0.0.1 that records
every request, answers as a test tells it, and can go down and come back on its port."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    @property
    def delivery(self) -> str:
        return self.headers["X-Dcmdb-Delivery"]


# What the receiver answers a request: a status, after a pause (seconds).
Behaviour = Callable[[Received], tuple[int, float]]


def always_ok(_: Received) -> tuple[int, float]:
    return 200, 0.0


@dataclass
class WebhookReceiver:
    port: int = field(default_factory=free_port)
    behaviour: Behaviour = always_ok
    requests: list[Received] = field(default_factory=list)  # every request, answered or not
    answered: list[tuple[Received, int]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/dcmdb"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                length = int(self.headers.get("Content-Length", "0"))
                request = Received(self.path, dict(self.headers.items()), self.rfile.read(length))
                with receiver._lock:
                    receiver.requests.append(request)
                status, pause = receiver.behaviour(request)
                time.sleep(pause)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the notifier gave up waiting
                    return
                with receiver._lock:
                    receiver.answered.append((request, status))

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in the order they were answered."""
        with self._lock:
            return [request for request, status in self.answered if 200 <= status < 300]

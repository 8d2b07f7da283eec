"""The side port of every service that does not speak HTTP: ``/metrics``, ``/healthz``, ``/readyz``.

The receiver speaks DICOM, the sorter, converter and retriever speak to RabbitMQ
and the catalog only; Prometheus and the container health checks need HTTP. Each
of them serves this small threaded HTTP server on ``DCMDB_METRICS_HOST``:
``DCMDB_METRICS_PORT`` (0: none), away from its own work:

- ``/metrics``: the process's default Prometheus registry;
- ``/healthz``: 200 while the process runs;
- ``/readyz``: 200 when every dependency the service declared answers, else 503;
  the body names each dependency and how it is (the API's ``/readyz`` says the same).

A dependency is declared when the service starts and watched once the service holds
what it needs to check it (a broker connection, a catalog engine): until then it
reports ``not connected yet``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import aiormq
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import Engine

from shared.catalog.database import ping
from shared.errors import ConfigurationError
from shared.settings import broker_addresses

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

log = logging.getLogger(__name__)

OK = "ok"
CHECK_TIMEOUT = 3.0  # seconds a dependency may take to answer /readyz

Check = Callable[[], str]  # OK, or why the dependency is not usable


class Dependency:
    """Something a service needs to do its work, as ``/readyz`` reports it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._check: Check | None = None

    def watch(self, check: Check) -> None:
        self._check = check

    def status(self) -> str:
        if self._check is None:
            return "not connected yet"
        return _within(CHECK_TIMEOUT, self._check)


class SidePort:
    """The side HTTP server of one service."""

    def __init__(self, service: str, host: str, port: int) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._dependencies: list[Dependency] = []
        self._scrape_hooks: list[Callable[[], None]] = []
        self._server: ThreadingHTTPServer | None = None

    def dependency(self, name: str) -> Dependency:
        dependency = Dependency(name)
        self._dependencies.append(dependency)
        return dependency

    def before_scrape(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before each ``/metrics`` answer (to bring in counts kept elsewhere)."""
        self._scrape_hooks.append(hook)

    def readiness(self) -> tuple[bool, dict[str, str]]:
        return readiness(self._dependencies)

    def metrics(self) -> bytes:
        for hook in self._scrape_hooks:
            hook()
        return generate_latest(REGISTRY)

    def start(self) -> None:
        """Serve in a daemon thread; a port already taken stops the service at start."""
        if self.port == 0:
            log.info("no side port (DCMDB_METRICS_PORT=0): no /metrics, /healthz or /readyz")
            return
        try:
            self._server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        except OSError as exc:
            raise ConfigurationError(
                f"DCMDB_METRICS_PORT: cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                "choose a free port, or 0 for none"
            ) from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="side-port", daemon=True).start()
        log.info(
            "metrics, health and readiness on http://%s:%d/ (/metrics, /healthz, /readyz)",
            self.host,
            self.port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _handler_for(side: SidePort) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, side.metrics(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._json(200, {"status": OK, "service": side.service})
            elif path == "/readyz":
                ready, statuses = side.readiness()
                self._json(200 if ready else 503, statuses)
            else:
                self._json(404, {"detail": "not found: try /metrics, /healthz or /readyz"})

        def _json(self, code: int, content: dict[str, str]) -> None:
            self._answer(code, json.dumps(content).encode(), "application/json")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # a scrape every few seconds is not news

    return Handler


def readiness(dependencies: Iterable[Dependency]) -> tuple[bool, dict[str, str]]:
    """Ready when every dependency answers OK; each one's status by name, the body of
    ``/readyz`` (the side port's and the API's)."""
    statuses = {d.name: d.status() for d in dependencies}
    return all(s == OK for s in statuses.values()), statuses


def broker_status(connection: AbstractConnection) -> str:
    """A RabbitMQ connection's state; a robust connection reconnects on its own."""
    return OK if connection.connected.is_set() else "unreachable: reconnecting to RabbitMQ"


def broker_reachable(urls: str) -> str:
    """For a service that holds no broker connection (the API): one opened and closed, to the
    first of the brokers in ``urls`` (``DCMDB_BROKER_URL``) that answers."""

    async def connect_and_close(url: str) -> None:
        connection = await asyncio.wait_for(aiormq.connect(url), CHECK_TIMEOUT)
        await connection.close()

    failure = ""
    for url in broker_addresses(urls):
        try:
            asyncio.run(connect_and_close(url))
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", said why
            failure = f"unreachable: {type(exc).__name__}"
            continue
        return OK
    return failure


def catalog_status(engine: Engine) -> str:
    try:
        ping(engine)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", said why
        return f"unreachable: {type(exc).__name__}"
    return OK


def _within(timeout: float, check: Check) -> str:
    """The check's answer, or "unreachable" when it takes longer than ``timeout``."""
    answer: list[str] = []
    worker = threading.Thread(target=lambda: answer.append(check()), daemon=True)
    worker.start()
    worker.join(timeout)
    return answer[0] if answer else f"unreachable: no answer within {timeout:.0f} s"

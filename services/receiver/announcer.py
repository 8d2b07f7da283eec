"""Announcing received instances on RabbitMQ without holding up the DICOM peer.

Publishing costs CPU (JSON, AMQP frames, confirms) that would compete with
receiving for the interpreter lock, so it runs in a child process of the
receiver. The C-STORE handler hands each event's fields to ``Announcer.announce``,
which pickles them into a pipe and returns at once.

The child publishes with publisher confirms and sweeps ``incoming/``
(`shared.announcing`): a file on disk is never stranded, not by a broker outage,
a full memory queue, a crashed child (the receiver starts a new one) or a
restart. The sorter is idempotent, so a file announced twice is filed once.

What the child did (events confirmed and failed, events waiting, whether it is
connected) it keeps in memory shared with the receiver (``PublishingCounts``),
which serves it on its side port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import threading
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError

from services.receiver import metrics
from services.receiver.settings import ReceiverSettings
from shared.announcing import Announcements, IncomingFolder
from shared.broker import EVENTS_FAILED, EVENTS_PUBLISHED, count_from_zero
from shared.logs import configure_logging
from shared.messages import AssociationClosed, Event, InstanceReceived

log = logging.getLogger(__name__)

_MODELS: dict[str, type[Event]] = {
    model.routing_key: model for model in (InstanceReceived, AssociationClosed)
}
_STOP = b""
_REPORT_EVERY = 1.0  # seconds between the child's reports of its queue and connection


class PublishingCounts:
    """The publishing child's counts, in shared memory: it writes, the receiver reads.

    They outlive a child that dies, so the receiver's counters never go back.
    """

    ROUTING_KEYS = tuple(_MODELS)

    def __init__(self, context: SpawnContext) -> None:
        # published per routing key, failed per routing key, waiting, connected
        self._values = context.RawArray("q", 2 * len(self.ROUTING_KEYS) + 2)

    def published(self, routing_key: str) -> None:
        self._values[self.ROUTING_KEYS.index(routing_key)] += 1

    def failed(self, routing_key: str) -> None:
        self._values[len(self.ROUTING_KEYS) + self.ROUTING_KEYS.index(routing_key)] += 1

    def report(self, waiting: int, connected: bool) -> None:
        self._values[-2], self._values[-1] = waiting, int(connected)

    def totals(self) -> list[tuple[Counter, str, int]]:
        """(counter, routing key, count so far) for each count the child keeps."""
        size = len(self.ROUTING_KEYS)
        return [
            (EVENTS_PUBLISHED if index < size else EVENTS_FAILED, self.ROUTING_KEYS[index % size],
             self._values[index])
            for index in range(2 * size)
        ]  # fmt: skip

    @property
    def waiting(self) -> int:
        return int(self._values[-2])

    @property
    def connected(self) -> bool:
        return bool(self._values[-1])


class Announcer:
    """The receiver's side: a pipe to the publishing child, restarted if it dies."""

    def __init__(self, settings: ReceiverSettings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: Connection | None = None
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="announcer-watch", daemon=True)
        self.counts = PublishingCounts(self._context)
        count_from_zero(*_MODELS.values())
        self._exported: dict[tuple[Counter, str], int] = {}
        self._export_lock = threading.Lock()

    def start(self) -> None:
        self._spawn()
        self._monitor.start()

    def announce(self, kind: type[Event], **fields: Any) -> None:
        """Announce an event of ``kind``; thread-safe, never blocks for the broker.

        The child builds and validates the event: the receiver only pickles its fields.
        """
        message = pickle.dumps((kind.routing_key, fields), pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._pipe is None:
                return  # restarting: its start-up sweep covers this file
            try:
                self._pipe.send_bytes(message)
            except OSError:
                self._pipe = None

    def connected(self) -> bool:
        """The publishing child is alive and connected to the broker."""
        process = self._process
        return process is not None and process.is_alive() and self.counts.connected

    def export_counts(self) -> None:
        """Bring the child's counts into this process's metrics (before each scrape)."""
        with self._export_lock:
            for counter, routing_key, total in self.counts.totals():
                child = counter.labels(routing_key)
                delta = total - self._exported.get((counter, routing_key), 0)
                if delta:
                    child.inc(delta)
                    self._exported[(counter, routing_key)] = total
            metrics.EVENTS_WAITING.set(self.counts.waiting)

    def stop(self, timeout: float = 15.0) -> None:
        """Let the child publish what waits (up to ``timeout``), then end it."""
        self._stopping.set()
        with self._lock:
            if self._pipe is not None:
                with contextlib.suppress(OSError):
                    self._pipe.send_bytes(_STOP)
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)

    def _spawn(self) -> None:
        receiving, sending = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_announcer,
            args=(receiving, self._settings, self.counts),
            name="announcer",
            daemon=True,
        )
        process.start()
        receiving.close()
        with self._lock:
            self._process, self._pipe = process, sending

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self._process is not None and not self._process.is_alive():
                log.error(
                    "the announcer process exited (code %s); starting a new one",
                    self._process.exitcode,
                )
                with self._lock:
                    self._pipe = None
                self._spawn()


def run_announcer(pipe: Connection, settings: ReceiverSettings, counts: PublishingCounts) -> None:
    """The child process: publish what the receiver hands over, and sweep."""
    configure_logging("receiver", settings.log_level, settings.log_format)
    announcements = Announcements(
        settings.broker_url,
        settings.topology,
        IncomingFolder(settings.data_dir, settings.incoming_folder, settings.quarantine_dir),
        settings.sweep_interval,
        connection_name="dcmdb-receiver",
        published=counts.published,
        failed=counts.failed,
    )
    asyncio.run(_Publishing(announcements, counts).run(pipe))


class _Publishing:
    """The child's side of the pipe: each event the receiver sends becomes an announcement."""

    def __init__(self, announcements: Announcements, counts: PublishingCounts) -> None:
        self._announcements = announcements
        self._counts = counts

    async def run(self, pipe: Connection) -> None:
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        reader = threading.Thread(
            target=self._read, args=(pipe, loop, stopped), name="pipe", daemon=True
        )
        reader.start()
        running = asyncio.create_task(self._announcements.run())
        reporting = asyncio.create_task(self._report_loop())
        await stopped
        reporting.cancel()
        await self._announcements.stop(timeout=10.0)
        running.cancel()

    def _read(
        self, pipe: Connection, loop: asyncio.AbstractEventLoop, stopped: asyncio.Future[None]
    ) -> None:
        while True:
            try:
                message = pipe.recv_bytes()
            except (EOFError, OSError):
                message = _STOP  # the receiver is gone
            if message == _STOP:
                loop.call_soon_threadsafe(_resolve, stopped)
                return
            routing_key, fields = pickle.loads(message)
            try:
                event = _MODELS[routing_key](**fields)
            except ValidationError as exc:  # the sweep announces the file properly later
                log.error("cannot announce %s: %s", routing_key, exc)
                continue
            loop.call_soon_threadsafe(self._announcements.enqueue, event)

    async def _report_loop(self) -> None:
        while True:
            self._counts.report(self._announcements.waiting, self._announcements.connected)
            await asyncio.sleep(_REPORT_EVERY)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

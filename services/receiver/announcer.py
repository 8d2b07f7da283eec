"""Announcing received instances on RabbitMQ without holding up the DICOM peer.

Publishing costs CPU (JSON, AMQP frames, confirms) that would compete with
receiving for the interpreter lock, so it runs in a child process of the
receiver. The C-STORE handler hands each event's fields to ``Announcer.announce``,
which pickles them into a pipe and returns at once.

The child publishes with publisher confirms. While the broker is away events
wait in memory (up to a bound). Its sweep, at start and every
``sweep_interval`` seconds, announces every file in ``incoming/`` that has no
confirmed or pending event, so a file on disk is never stranded: not by a
broker outage, a full memory queue, a crashed child (the receiver starts a new
one) or a restart. The sorter is idempotent, so a file announced twice is
filed once.

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
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError

from services.receiver import metrics
from services.receiver.settings import ReceiverSettings
from services.receiver.storage import IncomingStore, received_time
from shared.broker import EVENTS_FAILED, EVENTS_PUBLISHED, Publisher, connect, count_from_zero
from shared.errors import UnreadableObject
from shared.headers import Header
from shared.logs import about, configure_logging
from shared.messages import AssociationClosed, Event, InstanceReceived, Topology

log = logging.getLogger(__name__)

MAX_WAITING = 10_000
PUBLISHERS = 16
_MODELS: dict[str, type[Event]] = {
    model.routing_key: model for model in (InstanceReceived, AssociationClosed)
}
_STOP = b""
TRANSFER_SYNTAX, SOURCE_AE_TITLE = 0x00020010, 0x00020016
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
    publishing = _Publishing(
        settings.broker_url,
        settings.topology,
        settings.data_dir,
        settings.incoming_folder,
        settings.quarantine_dir,
        settings.sweep_interval,
        counts,
    )
    asyncio.run(publishing.run(pipe))


class _Publishing:
    def __init__(
        self,
        broker_url: str,
        topology: Topology,
        data_dir: Path,
        incoming_folder: str,
        quarantine_dir: Path,
        sweep_interval: float,
        counts: PublishingCounts,
    ) -> None:
        self._broker_url = broker_url
        self._topology = topology
        self._data_dir = data_dir
        self._incoming_folder = incoming_folder
        self._quarantine = quarantine_dir
        self._sweep_interval = sweep_interval
        self._counts = counts
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        # incoming_path of each event: announced and not yet confirmed, or confirmed
        self._in_flight: set[str] = set()
        self._confirmed: set[str] = set()

    async def run(self, pipe: Connection) -> None:
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        reader = threading.Thread(
            target=self._read, args=(pipe, loop, stopped), name="pipe", daemon=True
        )
        reader.start()
        connection = await connect(self._broker_url, name="dcmdb-receiver")
        publisher = Publisher(connection, self._topology)
        await publisher.start()
        log.info("connected to RabbitMQ; announcing arrivals")
        workers = [asyncio.create_task(self._publish_loop(publisher)) for _ in range(PUBLISHERS)]
        sweeping = asyncio.create_task(self._sweep_loop())
        reporting = asyncio.create_task(self._report_loop(connection))
        await stopped
        sweeping.cancel()
        reporting.cancel()
        await self._drain(timeout=10.0)
        for worker in workers:
            worker.cancel()
        await connection.close()

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
            loop.call_soon_threadsafe(self._enqueue, event)

    def _enqueue(self, event: Event) -> None:
        if isinstance(event, InstanceReceived):
            if self._queue.qsize() >= MAX_WAITING:
                return  # the file is on disk: the sweep announces it when there is room
            self._in_flight.add(event.incoming_path)
        self._queue.put_nowait(event)

    async def _sweep_loop(self) -> None:
        while True:
            known = self._in_flight | self._confirmed
            events = await asyncio.to_thread(
                sweep_incoming, self._data_dir, self._incoming_folder, self._quarantine, known
            )
            # Forget confirmations of files the sorter has taken away.
            self._confirmed = {p for p in self._confirmed if (self._data_dir / p).exists()}
            if events:
                log.info("sweep: announcing %d instance(s) waiting in incoming/", len(events))
            for event in events:
                self._enqueue(event)
            await asyncio.sleep(self._sweep_interval)

    async def _report_loop(self, connection: Any) -> None:
        while True:
            self._counts.report(self._queue.qsize(), connection.connected.is_set())
            await asyncio.sleep(_REPORT_EVERY)

    async def _publish_loop(self, publisher: Publisher) -> None:
        while True:
            event = await self._queue.get()
            await _publish_until_confirmed(publisher, event, self._counts)
            if isinstance(event, InstanceReceived):
                self._in_flight.discard(event.incoming_path)
                self._confirmed.add(event.incoming_path)
            self._queue.task_done()

    async def _drain(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning(
                "stopping with %d event(s) unpublished; the next start's sweep announces them",
                self._queue.qsize(),
            )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _publish_until_confirmed(
    publisher: Publisher, event: Event, counts: PublishingCounts
) -> None:
    delay = 0.5
    while True:
        try:
            await publisher.publish(event)
            counts.published(event.routing_key)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            counts.failed(event.routing_key)
            with about(event):
                log.warning("publishing %s failed (%s); retrying", event.routing_key, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def sweep_incoming(
    data_dir: Path, incoming_folder: str, quarantine: Path, known: set[str]
) -> list[InstanceReceived]:
    """Events for the files in ``incoming/`` that no confirmed or pending event covers."""
    events = []
    for path in IncomingStore.waiting_in(data_dir / incoming_folder):
        incoming_path = f"{incoming_folder}/{path.name}"
        if incoming_path in known:
            continue
        try:
            content = path.read_bytes()
            header = Header.from_part10(content)
            uids = header.identifiers()
        except FileNotFoundError:
            continue  # filed by the sorter meanwhile
        except UnreadableObject as exc:
            log.error("moving an unreadable file from incoming/ to quarantine/: %s", exc)
            path.rename(quarantine / path.name)
            continue
        events.append(
            InstanceReceived(
                sop_instance_uid=uids.sop_instance_uid,
                sop_class_uid=uids.sop_class_uid,
                study_instance_uid=uids.study_instance_uid,
                series_instance_uid=uids.series_instance_uid,
                transfer_syntax_uid=header.meta_text(TRANSFER_SYNTAX),
                incoming_path=incoming_path,
                size=len(content),
                received_at=received_time(path.name),
                calling_ae=header.meta_text(SOURCE_AE_TITLE),
                peer_host="",
                association_id="sweep",
            )
        )
    return events

"""Announcing what landed in an incoming folder, with publisher confirms, and sweeping it.

Each instance written to an incoming folder (`shared.incoming`) is announced as
``instance.received`` once it is durable; the sender has its answer by then, so nothing
here holds it up. `Announcements` publishes with publisher confirms, retrying each event
until the broker confirms it. While the broker is away events wait in memory (up to
`MAX_WAITING`); its sweep, at start and every ``sweep_interval`` seconds, announces every
file in the folder that has no confirmed or pending event, so a file on disk is never
stranded: not by a broker outage, a full memory queue or a restart. The sorter is
idempotent, so a file announced twice is filed once.

The receiver runs one in a child process of its own (`services.receiver.announcer`), the
API one in each of its processes, for the instances it takes by STOW-RS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection

from shared.broker import Publisher, connect
from shared.errors import UnreadableObject
from shared.headers import Header
from shared.incoming import IncomingStore, received_time
from shared.logs import about
from shared.messages import Event, InstanceReceived, Topology

log = logging.getLogger(__name__)

MAX_WAITING = 10_000
# A file younger than this may have its event on the way from the receiver to here: a
# periodic sweep leaves it to that event (the start's sweep takes every file).
SETTLING = timedelta(seconds=5)
PUBLISHERS = 16
TRANSFER_SYNTAX, SOURCE_AE_TITLE = 0x00020010, 0x00020016


def _nothing(routing_key: str) -> None:
    pass


@dataclass(frozen=True)
class IncomingFolder:
    """An incoming folder and what its sweep needs to know of it."""

    data_dir: Path
    folder: str  # in the data directory; events name files relative to it
    quarantine: Path
    # What a swept event gives as its calling AE title: None for the file meta information's
    # Source AE Title (the receiver writes the calling AE there).
    source: str | None = None


class Announcements:
    """Publishes the events handed to `enqueue` until the broker confirms each, and sweeps
    the folder. Runs in one event loop; `enqueue` is called in it."""

    def __init__(
        self,
        broker_url: str,
        topology: Topology,
        incoming: IncomingFolder,
        sweep_interval: float,
        *,
        connection_name: str,
        published: Callable[[str], None] = _nothing,
        failed: Callable[[str], None] = _nothing,
    ) -> None:
        self._broker_url = broker_url
        self._topology = topology
        self._incoming = incoming
        self._sweep_interval = sweep_interval
        self._connection_name = connection_name
        self._published, self._failed = published, failed
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        # incoming_path of each event: announced and not yet confirmed, or confirmed
        self._in_flight: set[str] = set()
        self._confirmed: set[str] = set()
        self._connection: AbstractRobustConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected.is_set()

    def enqueue(self, event: Event) -> None:
        if isinstance(event, InstanceReceived):
            if self._queue.qsize() >= MAX_WAITING:
                return  # the file is on disk: the sweep announces it when there is room
            self._in_flight.add(event.incoming_path)
        self._queue.put_nowait(event)

    async def run(self) -> None:
        """Connect (waiting for the broker as long as it takes), then publish and sweep until
        cancelled or `stop`ped."""
        self._connection = await connect(self._broker_url, name=self._connection_name)
        publisher = Publisher(self._connection, self._topology)
        try:
            await publisher.start()
        except BaseException:
            await self._connection.close()
            raise
        log.info("connected to RabbitMQ; announcing arrivals in %s/", self._incoming.folder)
        self._tasks = [
            *(asyncio.create_task(self._publish_loop(publisher)) for _ in range(PUBLISHERS)),
            asyncio.create_task(self._sweep_loop()),
        ]
        await asyncio.gather(*self._tasks)

    async def stop(self, timeout: float = 10.0) -> None:
        """Publish what waits (up to ``timeout``), then close; what is left the next
        start's sweep announces."""
        for task in self._tasks[PUBLISHERS:]:
            task.cancel()  # no more sweeping
        if self._tasks:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except TimeoutError:
                log.warning(
                    "stopping with %d event(s) unpublished; the next start's sweep announces them",
                    self._queue.qsize(),
                )
        for task in self._tasks:
            task.cancel()
        if self._connection is not None:
            await self._connection.close()

    async def _sweep_loop(self) -> None:
        settling = timedelta(0)  # the start's sweep
        while True:
            known = self._in_flight | self._confirmed
            before = datetime.now(UTC) - settling
            try:
                events = await asyncio.to_thread(sweep_incoming, self._incoming, known, before)
            except OSError as exc:  # the next sweep tries again
                log.error("cannot sweep %s/: %s", self._incoming.folder, exc)
                events = []
            # Announced while the sweep read the folder: leave those to their own event.
            events = [e for e in events if e.incoming_path not in self._in_flight]
            settling = SETTLING
            # Forget confirmations of files the sorter has taken away.
            data_dir = self._incoming.data_dir
            self._confirmed = {p for p in self._confirmed if (data_dir / p).exists()}
            if events:
                log.info(
                    "sweep: announcing %d instance(s) waiting in %s/",
                    len(events),
                    self._incoming.folder,
                )
            for event in events:
                self.enqueue(event)
            await asyncio.sleep(self._sweep_interval)

    async def _publish_loop(self, publisher: Publisher) -> None:
        while True:
            event = await self._queue.get()
            await self._publish_until_confirmed(publisher, event)
            if isinstance(event, InstanceReceived):
                self._in_flight.discard(event.incoming_path)
                self._confirmed.add(event.incoming_path)
            self._queue.task_done()

    async def _publish_until_confirmed(self, publisher: Publisher, event: Event) -> None:
        delay = 0.5
        while True:
            try:
                await publisher.publish(event)
                self._published(event.routing_key)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(event.routing_key)
                with about(event):
                    log.warning("publishing %s failed (%s); retrying", event.routing_key, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def sweep_incoming(
    incoming: IncomingFolder, known: set[str], before: datetime | None = None
) -> list[InstanceReceived]:
    """Events for the files in the incoming folder, received before ``before`` if given,
    that no confirmed or pending event covers; a file that does not read as DICOM is moved
    to quarantine."""
    events = []
    for path in IncomingStore.waiting_in(incoming.data_dir / incoming.folder):
        incoming_path = f"{incoming.folder}/{path.name}"
        if incoming_path in known:
            continue
        if before is not None and received_time(path.name) >= before:
            break  # oldest first: the rest are younger still
        try:
            content = path.read_bytes()
            header = Header.from_part10(content)
            uids = header.identifiers()
        except FileNotFoundError:
            continue  # filed by the sorter meanwhile
        except UnreadableObject as exc:
            log.error("moving an unreadable file from incoming/ to quarantine/: %s", exc)
            path.rename(incoming.quarantine / path.name)
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
                calling_ae=incoming.source or header.meta_text(SOURCE_AE_TITLE),
                peer_host="",
                association_id="sweep",
            )
        )
    return events

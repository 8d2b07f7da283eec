"""Announcing received instances on RabbitMQ without holding up the DICOM peer.

The C-STORE handler runs in an association thread; it hands each event to
``Announcer.announce`` and returns at once. A private asyncio loop publishes
with publisher confirms. While the broker is away events wait in memory (up
to a bound); the sweep republishes every file in ``incoming/`` that has no
confirmed event in this process, so a file on disk is never stranded, across
broker outages and receiver restarts alike. The sorter is idempotent, so a
file announced twice is filed once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from shared.broker import Publisher, connect
from shared.messages import Event, InstanceReceived

log = logging.getLogger(__name__)

MAX_WAITING = 10_000
PUBLISHERS = 16


class Announcer:
    def __init__(
        self,
        broker_url: str,
        *,
        sweep: Callable[[set[Path]], list[InstanceReceived]],
        sweep_interval: float,
        data_dir: Path,
    ) -> None:
        self._broker_url = broker_url
        self._sweep = sweep
        self._sweep_interval = sweep_interval
        self._data_dir = data_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)
        self._queue: asyncio.Queue[Event] | None = None
        self._in_flight: set[Path] = set()  # announced, not yet confirmed
        self._confirmed: set[Path] = set()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._main: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what is waiting (up to ``timeout``), then stop."""
        asyncio.run_coroutine_threadsafe(self._drain(timeout), self._loop).result(timeout + 5)
        if self._main:
            self._loop.call_soon_threadsafe(self._main.cancel)
        self._thread.join(timeout=5)

    def announce(self, event: Event) -> None:
        """Thread-safe and non-blocking; called from the association threads."""
        if isinstance(event, InstanceReceived):
            with self._lock:
                self._in_flight.add(self._path(event))
        self._loop.call_soon_threadsafe(self._enqueue, event)

    def _path(self, event: InstanceReceived) -> Path:
        return self._data_dir / event.incoming_path

    def _enqueue(self, event: Event) -> None:
        assert self._queue is not None
        if self._queue.qsize() >= MAX_WAITING and isinstance(event, InstanceReceived):
            # The file is on disk; the sweep announces it once the broker is back.
            with self._lock:
                self._in_flight.discard(self._path(event))
            return
        self._queue.put_nowait(event)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._queue = asyncio.Queue()
        self._ready.set()
        main = self._main = self._loop.create_task(self._main_task())
        try:
            self._loop.run_until_complete(main)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    async def _main_task(self) -> None:
        connection = await connect(self._broker_url, name="dcmdb-receiver")
        publisher = Publisher(connection)
        await _retry_forever(publisher.start, "declaring the broker topology")
        log.info("connected to RabbitMQ; announcing arrivals")
        workers = [asyncio.create_task(self._publish_loop(publisher)) for _ in range(PUBLISHERS)]
        try:
            while True:
                await self._run_sweep()
                await asyncio.sleep(self._sweep_interval)
        finally:
            for worker in workers:
                worker.cancel()
            await connection.close()

    async def _run_sweep(self) -> None:
        with self._lock:
            known = self._in_flight | self._confirmed
        events = await asyncio.to_thread(self._sweep, known)
        with self._lock:
            # Forget confirmations of files the sorter has taken away.
            self._confirmed = {path for path in self._confirmed if path.exists()}
        if events:
            log.info("sweep: announcing %d instance(s) waiting in incoming/", len(events))
        for event in events:
            self.announce(event)

    async def _publish_loop(self, publisher: Publisher) -> None:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            await self._publish_until_confirmed(publisher, event)
            self._queue.task_done()

    async def _publish_until_confirmed(self, publisher: Publisher, event: Event) -> None:
        delay = 0.5
        while True:
            try:
                await publisher.publish(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("publishing %s failed (%s); retrying", event.routing_key, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if isinstance(event, InstanceReceived):
                path = self._path(event)
                with self._lock:
                    self._in_flight.discard(path)
                    self._confirmed.add(path)
            return

    async def _drain(self, timeout: float) -> None:
        if self._queue is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning(
                "stopping with %d event(s) unpublished; the next start's sweep announces them",
                self._queue.qsize(),
            )


async def _retry_forever(action: Callable[[], Awaitable[None]], what: str) -> None:
    delay = 1.0
    while True:
        try:
            await action()
            return
        except Exception as exc:
            log.warning("%s failed (%s); retrying in %.0f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

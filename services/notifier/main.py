"""``dcmdb notifier``: tells labs' webhooks that a study is ready, a series failed, a
retrieval finished.

Three loops: a consumer of the converter's outcomes (queue ``<installation>.notifier``)
that recognises ``study.ready`` and ``series.failed`` (`recognition`); a look at the
catalog every ``DCMDB_WEBHOOK_POLL_INTERVAL`` seconds for retrieval jobs that ended; and
the delivery loop (`delivery`), up to ``DCMDB_WEBHOOK_WORKERS`` deliveries in flight.
Recognising writes the deliveries to the catalog; sending reads them from there: a
notifier stopped or crashed loses nothing, and deliveries go out while RabbitMQ is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from services.notifier import delivery, metrics, recognition, reconciliation
from services.notifier.catalog import Catalog, transient
from services.notifier.delivery import Backoff, Claimed
from services.notifier.payloads import Links
from services.notifier.settings import NotifierSettings
from shared.broker import connect, consume
from shared.catalog.states import DeliveryState
from shared.messages import NOTIFIER_QUEUE, SERIES_OUTCOMES, SeriesOutcome
from shared.monitoring import Dependency, SidePort, broker_status, catalog_status
from shared.service import Stop, serve

log = logging.getLogger("dcmdb.notifier")


class Notifier:
    """What the loops share: the catalog, the settings, and a wake-up for the sender."""

    def __init__(self, settings: NotifierSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.links = Links(settings.webhook_link_base)
        self.backoff = Backoff(
            settings.webhook_retry_min,
            settings.webhook_retry_max,
            settings.webhook_give_up_after,
        )
        self._wake = asyncio.Event()

    async def on_outcome(self, event: SeriesOutcome) -> None:
        made = await asyncio.to_thread(
            transient, lambda: recognition.series_outcome(self.catalog, self.links, event)
        )
        if made:
            log.info("%d webhook deliveries for series %s", made, event.series_instance_uid)
            self._wake.set()

    async def watch_retrievals(self) -> None:
        """Recognise the retrieval jobs and reconciliations that ended, until cancelled."""
        while True:
            try:
                made = await asyncio.to_thread(
                    recognition.finished_retrievals,
                    self.catalog,
                    self.links,
                    self.settings.webhook_retrieval_wait,
                )
            except Exception as exc:  # the catalog is away: the next look retries
                log.warning("looking for finished retrievals failed (%s); retrying", exc)
                made = 0
            if made:
                log.info("%d webhook deliveries for finished retrievals", made)
                self._wake.set()
            await self._watch_checks()
            await asyncio.sleep(self.settings.webhook_poll_interval)

    async def _watch_checks(self) -> None:
        """Recognise the scanners' checks that ended with studies the PACS lacks."""
        try:
            made = await asyncio.to_thread(
                reconciliation.finished_checks, self.catalog, self.settings.admin_webhook_lab
            )
        except Exception as exc:  # the catalog is away: the next look retries
            log.warning("looking for finished reconciliations failed (%s); retrying", exc)
            made = 0
        if made:
            log.info("%d webhook deliveries for studies the PACS lacks", made)
            self._wake.set()

    async def deliver(self) -> None:
        """Send due deliveries, a few at once, until cancelled; then let those in flight
        finish (each within the timeout)."""
        settings = self.settings
        slots = asyncio.Semaphore(settings.webhook_workers)
        in_flight: set[asyncio.Task[None]] = set()
        timeout = httpx.Timeout(settings.webhook_timeout)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            try:
                while True:
                    await slots.acquire()
                    claimed = await self._claim()
                    if claimed is None:
                        slots.release()
                        await self._idle()
                        continue
                    task = asyncio.create_task(self._send(client, claimed))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    task.add_done_callback(lambda _: slots.release())
            finally:
                if in_flight:
                    await asyncio.wait(in_flight, timeout=settings.webhook_timeout + 5)

    async def _claim(self) -> Claimed | None:
        claiming = asyncio.ensure_future(
            asyncio.to_thread(delivery.claim, self.catalog, self.settings.lease)
        )
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:  # stopping: let go of what the thread took
            with contextlib.suppress(Exception):
                if (claimed := await claiming) is not None:
                    await asyncio.to_thread(delivery.release, self.catalog, claimed)
            raise
        except Exception as exc:  # the catalog is away: the next look retries
            log.warning("looking for due webhook deliveries failed (%s); retrying", exc)
            return None

    async def _idle(self) -> None:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
        # that comes as the wait ends, and the loop would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.webhook_poll_interval):
                await self._wake.wait()
        self._wake.clear()

    async def _send(self, client: httpx.AsyncClient, claimed: Claimed) -> None:
        answer = await delivery.post(client, claimed, self.settings.webhook_timeout)
        try:
            state = await asyncio.to_thread(
                delivery.record, self.catalog, claimed, answer, self.backoff
            )
        except Exception as exc:  # sent again once its lease is over
            log.warning("recording delivery %s failed: %s", claimed.delivery_id, exc)
            return
        metrics.counted(claimed.event, state)
        if state != DeliveryState.PENDING:
            self._wake.set()  # the next delivery of the same study may go now


async def run(settings: NotifierSettings, side: SidePort, stop: Stop) -> None:
    """Recognise and deliver until cancelled (`shared.service`). A loop that fails stops
    the service with its error (``dcmdb up`` or compose restarts it), never silently."""
    catalog_ready, broker_ready = side.dependency("catalog"), side.dependency("broker")
    catalog = await asyncio.to_thread(Catalog.open, settings.catalog_url)
    catalog_ready.watch(lambda: catalog_status(catalog.engines[0]))
    metrics.count_from_zero()
    side.before_scrape(lambda: metrics.sample_pending(catalog))
    notifier = Notifier(settings, catalog)
    # Sending and the retrievals need only the catalog: they start before the broker answers.
    loops = [
        asyncio.create_task(notifier.deliver()),
        asyncio.create_task(notifier.watch_retrievals()),
        asyncio.create_task(_consume_outcomes(settings, notifier, broker_ready)),
    ]
    stop.running()
    try:
        done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
        for loop in done:
            loop.result()  # raises what ended it
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        catalog.dispose()


async def _consume_outcomes(
    settings: NotifierSettings, notifier: Notifier, broker_ready: Dependency
) -> None:
    connection = await connect(settings.broker_url, name="dcmdb-notifier")
    broker_ready.watch(lambda: broker_status(connection))
    log.info("notifying lab webhooks")
    try:
        await consume(
            connection, settings.topology, NOTIFIER_QUEUE, SERIES_OUTCOMES, notifier.on_outcome
        )
    finally:
        await connection.close()


def main() -> None:
    serve("notifier", NotifierSettings, run)

"""``dcmdb converter``: turns each completed series into NIfTI with a JSON sidecar."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from services.converter import metrics, records
from services.converter.bids_views import keep_bids_views
from services.converter.isolation import run_isolated, warm_up
from services.converter.settings import ConverterSettings
from shared.bids.views import BidsViews
from shared.broker import Publisher, connect, consume, count_from_zero
from shared.catalog.database import open_catalog
from shared.errors import TransientError
from shared.logs import ChildLogging
from shared.messages import (
    CONVERTER_QUEUE,
    SeriesCompleted,
    SeriesConverted,
    SeriesFailed,
    SeriesSkipped,
)
from shared.monitoring import SidePort, broker_status, catalog_status
from shared.reconversion import bring_up_to_date
from shared.service import Stop, serve

log = logging.getLogger("dcmdb.converter")


async def run(settings: ConverterSettings, side: SidePort, stop: Stop) -> None:
    """Convert until cancelled (`shared.service`)."""
    catalog, broker = side.dependency("catalog"), side.dependency("broker")
    engine, sessions = await asyncio.to_thread(open_catalog, settings.catalog_url, writer=True)
    catalog.watch(lambda: catalog_status(engine))
    queued = await asyncio.to_thread(bring_up_to_date, sessions)
    if queued:
        log.info("converting %d series again: this version converts them differently", len(queued))
    await asyncio.to_thread(warm_up)
    archive = settings.archive_root
    connection = await connect(settings.broker_url, name="dcmdb-converter")
    publisher = Publisher(connection, settings.topology)
    await publisher.start()
    count_from_zero(SeriesConverted, SeriesSkipped, SeriesFailed)
    broker.watch(lambda: broker_status(connection))

    async def on_series_completed(event: SeriesCompleted) -> None:
        job = await asyncio.to_thread(records.job_for, sessions, archive, event)
        if job is None:
            log.info("nothing to convert: the completion is stale or converted already")
            return
        logs = ChildLogging.now("converter", settings.log_level, settings.log_format)
        started = time.perf_counter()
        result = await asyncio.to_thread(run_isolated, job, settings.conversion_timeout, logs)
        if result.out_of_space:  # retried, then requeued: it converts once there is room
            raise TransientError(f"series {event.series_instance_uid}: {result.reason}")
        metrics.count(result, time.perf_counter() - started)
        log.info(
            "series %s generation %d: %s %s",
            event.series_instance_uid,
            event.generation,
            result.status,
            result.reason,
        )
        if await asyncio.to_thread(records.record, sessions, archive, event, result):
            await publisher.publish(records.outcome(event, result, archive))

    # One consumer per worker, each with one completion in hand: a bounded
    # number of conversions in flight, each in a process of its own.
    consumers = [
        asyncio.create_task(
            consume(
                connection,
                settings.topology,
                CONVERTER_QUEUE,
                SeriesCompleted,
                on_series_completed,
                prefetch=1,
            )
        )
        for _ in range(settings.workers)
    ]
    views = BidsViews(sessions, archive, settings.bids_dir, settings.bids_dates, settings.keys_path)
    consumers.append(asyncio.create_task(keep_bids_views(connection, settings, views)))
    stopping = threading.Event()  # the backfill's thread, told to end with the service
    backfilling = asyncio.create_task(asyncio.to_thread(views.backfill, stopping))
    log.info("converting with %d worker(s)", settings.workers)
    stop.running()
    try:
        await asyncio.Future()  # until stopped; the consumers run until cancelled too
    finally:
        stopping.set()
        for consumer in consumers:
            consumer.cancel()
        await asyncio.gather(*consumers, backfilling, return_exceptions=True)
        await connection.close()
        engine.dispose()


def main() -> None:
    serve("converter", ConverterSettings, run)

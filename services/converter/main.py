"""``dcmdb converter``: turns each completed series into NIfTI with a JSON sidecar."""

from __future__ import annotations

import asyncio
import logging
import signal

from services.converter import records
from services.converter.isolation import run_isolated, warm_up
from services.converter.settings import ConverterSettings
from shared.broker import Publisher, connect, consume
from shared.catalog.database import open_catalog
from shared.logs import ChildLogging, configure_logging
from shared.messages import CONVERTER_QUEUE, SeriesCompleted
from shared.settings import load_settings

log = logging.getLogger("dcmdb.converter")


async def run(settings: ConverterSettings) -> None:
    engine, sessions = await asyncio.to_thread(open_catalog, settings.catalog_url, writer=True)
    await asyncio.to_thread(warm_up)
    archive = settings.archive_root
    connection = await connect(settings.broker_url, name="dcmdb-converter")
    publisher = Publisher(connection)
    await publisher.start()

    async def on_series_completed(event: SeriesCompleted) -> None:
        job = await asyncio.to_thread(records.job_for, sessions, archive, event)
        if job is None:
            log.info("nothing to convert: the completion is stale or converted already")
            return
        logs = ChildLogging.now("converter", settings.log_level, settings.log_format)
        result = await asyncio.to_thread(run_isolated, job, settings.conversion_timeout, logs)
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
            consume(connection, CONVERTER_QUEUE, SeriesCompleted, on_series_completed, prefetch=1)
        )
        for _ in range(settings.workers)
    ]
    log.info("converting with %d worker(s)", settings.workers)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    for consumer in consumers:
        consumer.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    await connection.close()
    engine.dispose()
    log.info("converter stopped")


def main() -> None:
    settings = load_settings(ConverterSettings)
    configure_logging("converter", settings.log_level, settings.log_format)
    asyncio.run(run(settings))

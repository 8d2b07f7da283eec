"""``dcmdb sorter``: files each received instance under its lab's folder and in the catalog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.orm import Session, sessionmaker

from services.sorter import completion, metrics
from services.sorter.filing import Filer
from services.sorter.renaming import rename_hashed_instance_files
from services.sorter.settings import SorterSettings
from shared.broker import Publisher, connect, consume_batches, count_from_zero
from shared.catalog.database import open_catalog
from shared.logs import about
from shared.messages import SORTER_QUEUE, InstanceFiled, InstanceReceived, SeriesCompleted
from shared.monitoring import SidePort, broker_status, catalog_status
from shared.outbox import publishing_from_thread
from shared.overwrite import OverwritePolicy
from shared.service import Stop, serve

log = logging.getLogger("dcmdb.sorter")


async def run(settings: SorterSettings, side: SidePort, stop: Stop) -> None:
    """File until cancelled (`shared.service`)."""
    aliases = settings.aliases()
    catalog, broker = side.dependency("catalog"), side.dependency("broker")
    engine, sessions = await asyncio.to_thread(open_catalog, settings.catalog_url, writer=True)
    catalog.watch(lambda: catalog_status(engine))
    renamed = await asyncio.to_thread(rename_hashed_instance_files, sessions, settings.archive_root)
    if renamed:
        log.info("renamed %d instance file(s) to <SOPInstanceUID>.dcm", renamed)
    filer = Filer(
        sessions,
        settings.data_dir,
        settings.archive_root,
        settings.quarantine_dir,
        aliases,
        keys_file=settings.keys_path,
        policy=OverwritePolicy(settings.overwrite),
        history_dir=settings.history_dir,
    )
    connection = await connect(settings.broker_url, name="dcmdb-sorter")
    publisher = Publisher(connection, settings.topology)
    await publisher.start()
    count_from_zero(InstanceFiled, SeriesCompleted)
    broker.watch(lambda: broker_status(connection))

    filed = asyncio.Event()  # a retrieved series may now hold all its expected instances

    async def on_instances_received(events: list[InstanceReceived]) -> None:
        started = time.perf_counter()
        outcomes = await asyncio.to_thread(filer.file_batch, events)
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.count(outcomes)
        await asyncio.gather(*(publisher.publish(o.filed) for o in outcomes if o.filed is not None))
        filed.set()

    log.info("sorting into %s", settings.archive_root)
    completing = asyncio.create_task(
        announce_completions(sessions, publisher, settings.stable_age, filed)
    )
    sampling = asyncio.create_task(metrics.sample_queues(connection, settings.topology))
    consumer = asyncio.create_task(
        consume_batches(
            connection,
            settings.topology,
            SORTER_QUEUE,
            InstanceReceived,
            on_instances_received,
            prefetch=settings.prefetch,
            max_batch=settings.batch_size,
        )
    )
    stop.running()
    try:
        await consumer
    finally:
        completing.cancel()
        sampling.cancel()
        await connection.close()
        engine.dispose()


async def announce_completions(
    sessions: sessionmaker[Session],
    publisher: Publisher,
    stable_age: float,
    filed: asyncio.Event | None = None,
) -> None:
    """Complete the series that went quiet (or hold all they should) and publish each
    completion, forever: every `stable_age`/4 seconds, and after each batch filed."""
    interval = min(max(stable_age / 4, 0.2), 5.0)
    filed = filed or asyncio.Event()
    # From the catalog thread, which holds the series row until the broker confirmed.
    publish = publishing_from_thread(publisher)
    while True:
        try:
            await asyncio.to_thread(completion.complete_stable_series, sessions, stable_age)
            while event := await asyncio.to_thread(completion.announce_next, sessions, publish):
                with about(event):
                    log.info(
                        "series %s generation %d complete: %d instance(s), %s",
                        event.series_instance_uid,
                        event.generation,
                        event.instances,
                        event.reason,
                    )
                metrics.SERIES_COMPLETED.labels(event.reason).inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the catalog or broker is away: the next round retries
            log.warning("completing series failed (%s); retrying", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(filed.wait(), interval)
        filed.clear()


def main() -> None:
    serve("sorter", SorterSettings, run)

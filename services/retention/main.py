"""``dcmdb retention``: evicts the oldest studies when the archive runs low on space.

A round runs at start and every `DCMDB_RETENTION_INTERVAL` seconds: it first finishes any
eviction a crash or a stop left unfinished, then measures the archive's free space and
evicts what `shared.retention.plan` says (the dry run of ``GET /storage`` is the same
plan). Evicting needs only the catalog and the disk: ``study.evicted`` events wait in the
catalog while RabbitMQ is away. Several retention processes may run at once: each study
is claimed by one conditional update (`eviction.claim`), and each eviction announced once
(`eviction.announce_next`, the outbox of `shared.outbox`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from aio_pika.abc import AbstractRobustConnection
from sqlalchemy.orm import Session, sessionmaker

from services.retention import eviction
from services.retention.eviction import Evicted
from services.retention.metrics import DISK_FREE, EVICTED_BYTES, EVICTIONS
from services.retention.settings import RetentionSettings
from shared.broker import Publisher, connect
from shared.catalog.database import open_catalog
from shared.disk import DiskUsage, disk_usage
from shared.messages import Topology
from shared.monitoring import SidePort, catalog_status
from shared.outbox import publishing_from_thread
from shared.retention import Plan, Policy, plan_evictions
from shared.service import Stop, serve

log = logging.getLogger("dcmdb.retention")


class Retention:
    """Rounds of eviction on one archive; ``measure`` reads its free space."""

    def __init__(
        self,
        settings: RetentionSettings,
        sessions: sessionmaker[Session],
        measure: Callable[[Path], DiskUsage] = disk_usage,
    ) -> None:
        self.archive = settings.archive_root
        self.history = settings.history_dir
        self.bids_dir = settings.bids_dir
        self.sessions = sessions
        self.policy = Policy.of(settings)
        self.stable_age = settings.stable_age
        self.measure = measure
        self._short = False  # said once that nothing more may go

    def round(self, stop: threading.Event | None = None) -> list[Evicted]:
        """Finish what is unfinished, then evict what the plan says; what was evicted."""
        done = [self._finish(eid) for eid in eviction.unfinished(self.sessions)]
        if self.policy.enabled:
            done += self._evict(self._plan(), stop)
        else:
            DISK_FREE.set(self.measure(self.archive).free)
        return [d for d in done if d is not None]

    def _plan(self) -> Plan:
        with self.sessions() as session:
            plan = plan_evictions(
                session,
                lambda: self.measure(self.archive),
                self.policy,
                datetime.now(UTC),
                self.stable_age,
            )
        DISK_FREE.set(plan.usage.free)
        self._say_if_short(plan.short_of_target, plan.usage)
        if plan.evictions:
            log.info(
                "%d of %d bytes free (low mark %s, target %s): evicting %d studies, %d bytes",
                plan.usage.free,
                plan.usage.total,
                plan.low_free_bytes,
                plan.target_free_bytes,
                len(plan.evictions),
                plan.bytes,
            )
        return plan

    def _evict(self, plan: Plan, stop: threading.Event | None) -> list[Evicted | None]:
        done = []
        for planned in plan.evictions:
            if stop is not None and stop.is_set():
                break
            candidate = planned.candidate
            claimed = eviction.claim(self.sessions, candidate, planned.reason, self.stable_age)
            if claimed is None:
                log.info("study %s is pinned, in flight or taken meanwhile", candidate.study_uid)
                continue
            done.append(self._finish(claimed))
        return done

    def _finish(self, eviction_id: int) -> Evicted | None:
        evicted = eviction.finish(
            self.sessions, self.archive, eviction_id, self.history, self.bids_dir
        )
        if evicted is not None:
            EVICTIONS.labels(evicted.reason).inc()
            EVICTED_BYTES.labels(evicted.reason).inc(evicted.size_bytes)
            log.info(
                "evicted study %s (%s, %d bytes)",
                evicted.study_uid,
                evicted.reason,
                evicted.size_bytes,
            )
        return evicted

    def _say_if_short(self, short: bool, usage: DiskUsage) -> None:
        if short and not self._short:
            log.warning(
                "the archive stays below its free-space target (%d bytes free): every other "
                "study is pinned or in flight",
                usage.free,
            )
        self._short = short


async def announce(sessions: sessionmaker[Session], publisher: Publisher) -> None:
    """Publish every closed eviction not yet confirmed published (the outbox)."""
    publish = publishing_from_thread(publisher)
    while await asyncio.to_thread(eviction.announce_next, sessions, publish) is not None:
        pass


async def run(settings: RetentionSettings, side: SidePort, stop: Stop) -> None:
    """Rounds until cancelled (`shared.service`); ``stop`` ends the round in hand after
    its current study, and the evictions done are announced before the service stops."""
    # Evicting needs the catalog; the broker only carries the events, which wait meanwhile.
    catalog = side.dependency("catalog")
    engine, sessions = await asyncio.to_thread(open_catalog, settings.catalog_url, writer=True)
    catalog.watch(lambda: catalog_status(engine))
    retention = Retention(settings, sessions)
    _describe(settings)
    stop.running()
    # Evicting does not wait for the broker: it connects meanwhile.
    connecting = asyncio.create_task(_connect(settings.broker_url, settings.topology))
    try:
        while True:
            await _round(retention, stop)
            await _announce(sessions, connecting)
            await asyncio.sleep(settings.retention_interval)
    finally:
        await _announce(sessions, connecting)
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            await connecting.result()[0].close()
        connecting.cancel()
        engine.dispose()


async def _round(retention: Retention, stop: threading.Event) -> None:
    # Shielded: cancelled, the round in hand sees ``stop`` and ends after its current study.
    round_in_hand = asyncio.ensure_future(asyncio.to_thread(retention.round, stop))
    try:
        await asyncio.shield(round_in_hand)
    except asyncio.CancelledError:
        await asyncio.gather(round_in_hand, return_exceptions=True)
        raise
    except Exception as exc:  # the catalog or the disk is away: the next round retries
        log.warning("retention round failed (%s); retrying", exc)


async def _announce(
    sessions: sessionmaker[Session],
    connecting: asyncio.Task[tuple[AbstractRobustConnection, Publisher]],
) -> None:
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        try:
            await announce(sessions, connecting.result()[1])
        except Exception as exc:  # the broker is away: the events wait in the catalog
            log.warning("announcing evictions failed (%s); retrying", exc)


async def _connect(url: str, topology: Topology) -> tuple[AbstractRobustConnection, Publisher]:
    connection = await connect(url, name="dcmdb-retention")
    publisher = Publisher(connection, topology)
    await publisher.start()
    return connection, publisher


def _describe(settings: RetentionSettings) -> None:
    if settings.retention_low_free is None and settings.retention_max_age_days is None:
        log.info(
            "retention is off: neither DCMDB_RETENTION_LOW_FREE nor "
            "DCMDB_RETENTION_MAX_AGE_DAYS is set; finishing interrupted evictions only"
        )
        return
    log.info(
        "evicting the oldest studies below %s free until %s free%s, every %.0f s",
        settings.retention_low_free or "(no low mark)",
        settings.retention_target_free or settings.retention_low_free or "-",
        f"; older than {settings.retention_max_age_days:g} days whatever the space"
        if settings.retention_max_age_days
        else "",
        settings.retention_interval,
    )


def main() -> None:
    serve("retention", RetentionSettings, run)

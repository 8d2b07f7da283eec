"""The sorter's Prometheus metrics, and the queue depths it samples from RabbitMQ.

Queue depths come from the broker itself (a passive declare answers with the number of
ready messages), sampled by the sorter because it holds a connection anyway. Several
sorters each report the same depths: read them with ``max by (queue)``.
"""

from __future__ import annotations

import asyncio
import logging
import typing

from aio_pika.abc import AbstractRobustConnection
from prometheus_client import Counter, Gauge, Histogram

from services.sorter.filing import Outcome
from shared.broker import queue_depths
from shared.messages import SeriesCompleted, Topology

log = logging.getLogger(__name__)

QUEUE_SAMPLE_INTERVAL = 5.0  # seconds; Prometheus scrapes every 15

INSTANCES = Counter(
    "dcmdb_sorter_instances_total",
    "Received instances handled: filed, replaced (a copy that replaces the filed one, which is "
    "kept in history/), duplicate (filed already, or an older copy kept in history/), "
    "quarantined (unreadable, a copy that does not replace the filed one, or an instance of "
    "a study filed under another lab)",
    ["outcome"],
)
BATCH_SECONDS = Histogram(
    "dcmdb_sorter_batch_seconds",
    "Time to file one batch of instances (read, link, catalog commit, fsync)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SERIES_COMPLETED = Counter(
    "dcmdb_series_completed_total",
    "Series completions published, by why: stable (quiet for the stable age) or expected "
    "count reached (a retrieval's series holds all it should)",
    ["reason"],
)
QUEUE_MESSAGES = Gauge(
    "dcmdb_queue_messages", "Messages waiting in a consumer queue (not yet delivered)", ["queue"]
)
DEAD_LETTERS = Gauge(
    "dcmdb_dead_letter_messages", "Messages waiting in a dead-letter queue for an admin", ["queue"]
)


for _outcome in ("filed", "replaced", "duplicate", "quarantined"):
    INSTANCES.labels(_outcome)  # exported at 0 from the start
for _reason in typing.get_args(SeriesCompleted.model_fields["reason"].annotation):
    SERIES_COMPLETED.labels(_reason)


def count(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        if outcome.replaced:
            INSTANCES.labels("replaced").inc()
        elif outcome.duplicate:
            INSTANCES.labels("duplicate").inc()
        elif outcome.filed is not None:
            INSTANCES.labels("filed").inc()
        else:
            INSTANCES.labels("quarantined").inc()


async def sample_queues(connection: AbstractRobustConnection, topology: Topology) -> None:
    """Keep the gauges of the installation's queues current, forever."""
    dead_letter_names = set(topology.dead_letter_names)
    while True:
        try:
            for name, depth in (await queue_depths(connection, topology)).items():
                gauge = DEAD_LETTERS if name in dead_letter_names else QUEUE_MESSAGES
                gauge.labels(name).set(depth)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker is away: the connection comes back on its own
            log.debug("sampling queue depths failed: %s", exc)
        await asyncio.sleep(QUEUE_SAMPLE_INTERVAL)

"""The receiver's Prometheus metrics.

C-STORE is the hot path: an association binds its calling AE's counters once
(``PeerCounters``), so each instance costs two ``inc`` and one ``observe``.
Calling AE titles are the only label from outside; UIDs and patient data never are.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

INSTANCES = Counter(
    "dcmdb_receiver_instances_total",
    "Instances stored in incoming/ and answered 0x0000, by calling AE",
    ["calling_ae"],
)
BYTES = Counter(
    "dcmdb_receiver_bytes_total",
    "Bytes of the instances stored (data set as received), by calling AE",
    ["calling_ae"],
)
REFUSED = Counter(
    "dcmdb_receiver_instances_refused_total",
    "Instances answered with an error status, by calling AE and reason",
    ["calling_ae", "reason"],
)
STORE_SECONDS = Histogram(
    "dcmdb_receiver_store_seconds",
    "Time from a C-STORE request in hand to its answer (parsing, writing, fsync)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
ASSOCIATIONS_OPEN = Gauge("dcmdb_receiver_associations_open", "Associations open now")
ASSOCIATIONS = Counter(
    "dcmdb_receiver_associations_total",
    "Associations ended, by how: released, aborted, or rejected (not allowed)",
    ["outcome"],
)
for _outcome in ("released", "aborted", "rejected"):
    ASSOCIATIONS.labels(_outcome)  # exported at 0 from the start
QUERIES = Counter(
    "dcmdb_receiver_queries_total",
    "C-FIND requests, by level (none when refused before it was read) and outcome: answered,"
    " cancelled, refused (not a desktop, or an identifier dcmdb does not answer), failed",
    ["level", "outcome"],
)
QUERY_MATCHES = Counter("dcmdb_receiver_query_matches_total", "C-FIND matches sent", ["level"])
DISK_FREE = Gauge(
    "dcmdb_disk_free_bytes", "Free bytes on the filesystem of a data directory", ["directory"]
)
DISK_SIZE = Gauge(
    "dcmdb_disk_size_bytes", "Size of the filesystem of a data directory", ["directory"]
)
EVENTS_WAITING = Gauge(
    "dcmdb_receiver_events_waiting",
    "Events handed to the publishing process and not yet confirmed by the broker",
)


@dataclass(frozen=True)
class PeerCounters:
    """One calling AE's counters, bound when its association is accepted."""

    instances: Counter
    bytes: Counter

    @classmethod
    def of(cls, calling_ae: str) -> PeerCounters:
        return cls(INSTANCES.labels(calling_ae), BYTES.labels(calling_ae))


def watch_disks(directories: dict[str, Path]) -> None:
    """Report each directory's free and total space, measured when Prometheus asks."""
    for name, path in directories.items():
        DISK_FREE.labels(name).set_function(partial(_usage, path, "free"))
        DISK_SIZE.labels(name).set_function(partial(_usage, path, "total"))


def _usage(path: Path, which: str) -> float:
    # The archive may not exist before the sorter's first start: measure what holds it.
    while not path.exists() and path != path.parent:
        path = path.parent
    return float(getattr(shutil.disk_usage(path), which))

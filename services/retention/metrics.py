"""Prometheus metrics of the retention service (served on its metrics port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from shared.catalog.states import EvictionReason

EVICTIONS = Counter("dcmdb_evictions_total", "Studies evicted", ["reason"])
EVICTED_BYTES = Counter(
    "dcmdb_evicted_bytes_total",
    "Bytes of the studies evicted, as the catalog counts them",
    ["reason"],
)
# The receiver exports the same gauge for each data directory; here, the archive's.
DISK_FREE = Gauge(
    "dcmdb_disk_free_bytes", "Free bytes on the filesystem of a data directory", ["directory"]
).labels("archive")

for _reason in EvictionReason:  # every series exists from the start, at 0
    EVICTIONS.labels(_reason)
    EVICTED_BYTES.labels(_reason)

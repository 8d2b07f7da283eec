"""The retriever's Prometheus metrics: retrieval jobs by state, sampled from the catalog.

Jobs live in the catalog, not in one retriever: each retriever reports the same counts
(read them with ``max by (state)``). Sampled on a reader engine of its own, so that the
count never waits behind a writer's lock on SQLite.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Gauge

from shared import retrievals
from shared.catalog.database import create_catalog_engine, session_factory

log = logging.getLogger(__name__)

JOBS_SAMPLE_INTERVAL = 5.0  # seconds; Prometheus scrapes every 15

JOBS = Gauge("dcmdb_retrieval_jobs", "Retrieval jobs in the catalog, by state", ["state"])


def sample_jobs(catalog_url: str, stop: threading.Event) -> None:
    """Keep the job gauge current until ``stop``; run it in a thread of its own."""
    engine = create_catalog_engine(catalog_url)
    sessions = session_factory(engine)
    try:
        while True:
            try:
                with sessions() as session:
                    counts = retrievals.jobs_by_state(session)
                for state, count in counts.items():
                    JOBS.labels(state).set(count)
            except Exception as exc:  # the catalog is away: the next round tries again
                log.debug("counting retrieval jobs failed: %s", exc)
            if stop.wait(JOBS_SAMPLE_INTERVAL):
                return
    finally:
        engine.dispose()

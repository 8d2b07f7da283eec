"""``dcmdb retriever``: runs the retrieval jobs the API records, and the nightly one.

Jobs live in the catalog (see `shared.retrievals`): the retriever claims one at a time,
runs it (`runner`), and looks for the next every `DCMDB_POLL_INTERVAL` seconds. A job cut
off by a stop or a crash is taken over once its lease (`DCMDB_JOB_LEASE`) runs out.
"""

from __future__ import annotations

import logging
import threading

from services.retriever import metrics, nightly, reconciling
from services.retriever.runner import JobRunner
from services.retriever.settings import RetrieverSettings
from shared import retrievals
from shared.catalog.database import open_catalog
from shared.monitoring import SidePort, catalog_status
from shared.service import Stop, serve

log = logging.getLogger("dcmdb.retriever")


def run(settings: RetrieverSettings, side: SidePort, stop: Stop) -> None:
    """Claim and run jobs until stopped. A stop interrupts a job where it is: a job in the
    middle of a move is left to its lease, and another retriever (or this one, restarted)
    takes it over and moves what is still missing."""
    stop.running()  # a stop interrupts the catalog's first connection too
    catalog = side.dependency("catalog")
    engine, sessions = open_catalog(settings.catalog_url, writer=True)
    catalog.watch(lambda: catalog_status(engine))
    threading.Thread(
        target=metrics.sample_jobs, args=(settings.catalog_url, stop), daemon=True
    ).start()
    runner = JobRunner(settings, sessions)
    peers = ", ".join(str(p) for p in settings.peers) or "none configured"
    log.info("retrieving to AE %s; PACS: %s", settings.ae_title, peers)
    if not settings.peers:
        log.warning("no PACS configured (DCMDB_PACS): there is nothing to retrieve from")
    elif settings.nightly_retrieve.strip():
        log.info("nightly retrieval at '%s'", settings.nightly_retrieve)
    if settings.scanners and settings.nightly_reconcile.strip() and settings.rescue != "off":
        names = ", ".join(scanner.name for scanner in settings.scanners)
        log.info("scanners %s checked against the PACS at '%s'", names, settings.nightly_reconcile)
    try:
        while not stop.is_set():
            try:
                nightly.schedule(settings, sessions)
                reconciling.schedule(settings, sessions)
                job_id = retrievals.claim(sessions, settings.job_lease)
                if job_id is not None:
                    runner.run(job_id)
                    continue
            except Exception as exc:  # the catalog is away: the next round retries
                log.warning("retrieval round failed (%s); retrying", exc)
            stop.wait(settings.poll_interval)
    finally:
        engine.dispose()


def main() -> None:
    serve("retriever", RetrieverSettings, run)

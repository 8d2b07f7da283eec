"""The nightly reconciliation of the scanners with the PACS (`shared.reconciliation`): one
run per scanner and cron slot (`DCMDB_NIGHTLY_RECONCILE`, after the nightly retrieval by
default; none with ``DCMDB_RESCUE=off``).

Every retriever checks the schedule; a scanner's run of a slot is unique in the catalog,
so of several retrievers exactly one runs it. A scanner that could not be asked has a
failed run with the reason, and is asked again at the next slot.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from services.retriever.nightly import SLOT_FORMAT, latest_slot
from services.retriever.settings import RetrieverSettings
from shared.reconciliation import reconcile_scanner

log = logging.getLogger("dcmdb.retriever")


def schedule(
    settings: RetrieverSettings, sessions: sessionmaker[Session], now: datetime | None = None
) -> list[int]:
    """Run each scanner's check of the latest slot if it is due and nobody ran it; the
    ids of the runs made here."""
    if settings.rescue == "off" or not settings.nightly_reconcile.strip() or not settings.scanners:
        return []
    now = now or datetime.now()
    slot = latest_slot(settings.nightly_reconcile, now)
    if now - slot > timedelta(hours=settings.nightly_grace_hours):
        return []
    runs = []
    for scanner in settings.scanners:
        run_id = reconcile_scanner(settings, sessions, scanner, slot=slot.strftime(SLOT_FORMAT))
        if run_id is not None:
            runs.append(run_id)
    return runs

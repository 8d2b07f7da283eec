"""The nightly retrieval: one job per cron slot, for the day before the slot.

Every retriever checks the schedule; the job's slot is unique in the catalog, so of
several retrievers (or one restarted) exactly one creates it. A slot missed while dcmdb
was down runs when it comes back within the grace period.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from croniter import croniter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.retriever.settings import RetrieverSettings
from shared.retrievals import new_job

log = logging.getLogger("dcmdb.retriever")
SLOT_FORMAT = "%Y-%m-%dT%H:%M"


def latest_slot(expression: str, now: datetime) -> datetime:
    """The latest time the cron expression names, at or before `now` (local time)."""
    return croniter(expression, now + timedelta(seconds=1)).get_prev(datetime)


def nightly_query(settings: RetrieverSettings, slot: datetime) -> dict[str, str]:
    query = {"study_date": (slot.date() - timedelta(days=1)).strftime("%Y%m%d")}
    if settings.nightly_modality:
        query["modality"] = settings.nightly_modality
    if settings.nightly_physician:
        query["referring_physician"] = settings.nightly_physician
    return query


def schedule(
    settings: RetrieverSettings, sessions: sessionmaker[Session], now: datetime | None = None
) -> int | None:
    """Create the job of the latest slot if it is due and nobody created it; its id."""
    if not settings.nightly_retrieve.strip() or not settings.peers:
        return None
    now = now or datetime.now()
    slot = latest_slot(settings.nightly_retrieve, now)
    if now - slot > timedelta(hours=settings.nightly_grace_hours):
        return None
    try:
        with sessions.begin() as session:
            job = new_job(
                session,
                origin="nightly",
                pacs=settings.peer(None).name,
                query=nightly_query(settings, slot),
                nightly_slot=slot.strftime(SLOT_FORMAT),
            )
            job_id = job.id
    except IntegrityError:
        return None  # this slot has its job already
    log.info("nightly retrieval for %s queued as job %d", slot.strftime(SLOT_FORMAT), job_id)
    return job_id

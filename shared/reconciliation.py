"""The reconciliation of each scanner with the PACS: what the scanner holds that the PACS
lacks, recorded in the catalog with the day the scanner deletes it.

One run checks one scanner (`reconcile_scanner`): its studies of the keep window
(`shared.reconciliation_inventory`), compared study by study and series by series with
the PACS; each difference found is recorded, or its open row brought up to date; a
difference a later run no longer finds is closed, with when and how (`Resolution`). A
peer that cannot be asked makes a failed run with the reason, and leaves every open
difference open. With ``DCMDB_RESCUE=fetch`` each open difference is fetched from the
scanner by a retrieval job (`shared.rescue`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import CheckState, DifferenceKind, DifferenceState, Resolution
from shared.catalog.types import now
from shared.peers import PacsSettings, Peer
from shared.reconciliation_inventory import (
    PeerUnavailable,
    ScannerStudy,
    pacs_counts,
    scanner_inventory,
    window,
)
from shared.rescue import rescue, settle_rescues

log = logging.getLogger("dcmdb.reconciliation")
Rescue = Literal["off", "report", "fetch"]


class ReconcileSettings(PacsSettings):
    # Cron expression of the nightly reconciliation of the scanners with the PACS ("" off);
    # the default comes after the nightly retrieval's.
    nightly_reconcile: str = "0 3 * * *"
    # What is done of a study the PACS lacks: no nightly check at all (off; dcmdb reconcile
    # still checks when asked), recorded (report), or recorded and retrieved from the
    # scanner into dcmdb (fetch).
    rescue: Rescue = "report"
    # How long a scanner or the PACS may take to answer one C-FIND, in seconds.
    reconcile_timeout: float = Field(default=30.0, gt=0)


@dataclass(frozen=True)
class Found:
    """One difference, as a run sees it."""

    study: ScannerStudy
    kind: DifferenceKind
    series_uid: str  # "" for a whole study
    scanner_instances: int
    pacs_instances: int

    @property
    def key(self) -> tuple[str, str]:
        return self.study.study_uid, self.series_uid


def compare(study: ScannerStudy, on_pacs: dict[str, int]) -> list[Found]:
    """What the PACS lacks of one scanner study."""
    if not any(study.series.values()):
        return []  # nothing to lose
    if not on_pacs:
        total = sum(study.series.values())
        return [Found(study, DifferenceKind.STUDY_MISSING, "", total, 0)]
    found = []
    for series_uid, count in sorted(study.series.items()):
        there = on_pacs.get(series_uid)
        if there is None:
            found.append(Found(study, DifferenceKind.SERIES_MISSING, series_uid, count, 0))
        elif there < count:
            found.append(Found(study, DifferenceKind.INSTANCES_MISSING, series_uid, count, there))
    return found


def reconcile_scanner(
    settings: ReconcileSettings,
    sessions: sessionmaker[Session],
    scanner: Peer,
    *,
    days: int | None = None,
    slot: str | None = None,
    today: dt.date | None = None,
) -> int | None:
    """Check one scanner against the default PACS; the run's id, or None when the nightly
    `slot` of this scanner ran already (another retriever took it)."""
    first, last = window(days or scanner.keeps_days, today or dt.date.today())
    pacs_name = settings.peers[0].name if settings.peers else ""
    run_id = _start(sessions, scanner.name, pacs_name, slot, first, last)
    if run_id is None:
        return None
    associations = 0
    try:
        if not settings.peers:
            raise PeerUnavailable("no PACS is configured (DCMDB_PACS) to compare with")
        timeout = settings.reconcile_timeout
        inventory = scanner_inventory(scanner, (first, last), settings.aliases(), timeout)
        associations = inventory.associations
        uids = [study.study_uid for study in inventory.studies]
        on_pacs, opened = pacs_counts(settings.peers[0], uids, timeout)
        associations += opened
    except PeerUnavailable as error:
        _finish(sessions, run_id, CheckState.FAILED, str(error), associations=associations)
        log.warning("reconciliation of scanner %s failed: %s", scanner.name, error)
        return run_id
    found = [f for study in inventory.studies for f in compare(study, on_pacs[study.study_uid])]
    try:
        with sessions.begin() as session:
            settle_rescues(session, scanner.name)
            record(session, scanner, found, inventory.studies, (first, last))
            if settings.rescue == "fetch":
                rescue(session, scanner.name)
            still_open = _open_count(session, scanner.name)
    except Exception as error:  # the catalog: the run says so rather than stay "running"
        _finish(sessions, run_id, CheckState.FAILED, f"the catalog could not record it: {error}")
        raise
    _finish(
        sessions,
        run_id,
        CheckState.CHECKED,
        studies=len(inventory.studies),
        missing=still_open,
        associations=associations,
    )
    log.info(
        "reconciliation of scanner %s: %d studies, %d differences open",
        scanner.name,
        len(inventory.studies),
        still_open,
    )
    return run_id


def record(
    session: Session,
    scanner: Peer,
    found: list[Found],
    studies: Iterable[ScannerStudy],
    days: tuple[dt.date, dt.date],
) -> None:
    """Open or bring up to date each difference found; close those no longer found."""
    moment = now()
    listed = {study.study_uid for study in studies}
    rows = _unclosed(session, scanner.name)
    seen = set()
    for item in found:
        seen.add(item.key)
        row = rows.get(item.key)
        if row is None and _rescued(session, scanner.name, item):
            continue  # dcmdb holds it already, from a rescue: nothing is at risk
        if row is None:
            row = Difference(
                scanner=scanner.name,
                study_uid=item.study.study_uid,
                series_uid=item.series_uid,
                state=DifferenceState.OPEN,
                lab=item.study.lab,
                study_date=item.study.study_date,
                deadline=item.study.study_date + dt.timedelta(days=scanner.keeps_days),
                found_at=moment,
                resolution="",
            )
            session.add(row)
        row.kind = item.kind
        row.scanner_instances = item.scanner_instances
        row.pacs_instances = item.pacs_instances
        row.checked_at = moment
    first, last = days
    for key, row in rows.items():
        if key in seen or not first <= row.study_date <= last:
            continue
        gone = row.study_uid not in listed
        _close(row, Resolution.GONE if gone else Resolution.ON_PACS, moment)


def _unclosed(session: Session, scanner: str) -> dict[tuple[str, str], Difference]:
    rows = session.scalars(
        select(Difference).where(
            Difference.scanner == scanner, Difference.state != DifferenceState.CLOSED
        )
    )
    return {(row.study_uid, row.series_uid): row for row in rows}


def _rescued(session: Session, scanner: str, item: Found) -> bool:
    return (
        session.scalar(
            select(Difference.id).where(
                Difference.scanner == scanner,
                Difference.study_uid == item.study.study_uid,
                Difference.series_uid == item.series_uid,
                Difference.resolution == Resolution.RESCUED,
            )
        )
        is not None
    )


def _close(row: Difference, how: Resolution, moment: dt.datetime) -> None:
    row.state, row.resolution, row.closed_at = DifferenceState.CLOSED, how, moment


def _open_count(session: Session, scanner: str) -> int:
    return len(_unclosed(session, scanner))


def _start(
    sessions: sessionmaker[Session],
    scanner: str,
    pacs: str,
    slot: str | None,
    first: dt.date,
    last: dt.date,
) -> int | None:
    try:
        with sessions.begin() as session:
            run = ReconciliationRun(
                scanner=scanner,
                pacs=pacs,
                nightly_slot=slot,
                state=CheckState.RUNNING,
                reason="",
                first_day=first,
                last_day=last,
                studies=0,
                missing=0,
                associations=0,
                started_at=now(),
            )
            session.add(run)
            session.flush()
            return run.id
    except IntegrityError:
        return None  # this scanner's slot has its run already


def _finish(
    sessions: sessionmaker[Session],
    run_id: int,
    state: CheckState,
    reason: str = "",
    **counts: int,
) -> None:
    with sessions.begin() as session:
        run = session.get(ReconciliationRun, run_id)
        assert run is not None
        run.state, run.reason, run.finished_at = state, reason, now()
        for name, value in counts.items():
            setattr(run, name, value)

"""What a scanner holds, and what the PACS holds of it: series and instance counts, read
by C-FIND over one association per peer and run (not one per study), so that a
reconciliation is cheap enough to run every hour.

A peer that cannot be asked (down, refusing, silent past the timeout) raises
``PeerUnavailable`` saying which side and why: the reconciliation then records a failed
run, never a report with nothing missing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pynetdicom.association import Association

from shared.errors import PacsError
from shared.naming import PhysicianAliases, physician_folder
from shared.pacs import FIND_MODEL, associate
from shared.pacs_find import image_counts_on, series_counts_on, studies_on
from shared.peers import Peer


class PeerUnavailable(Exception):
    """A scanner or a PACS could not be asked; the message says which and why."""


@dataclass(frozen=True)
class ScannerStudy:
    study_uid: str
    study_date: dt.date
    lab: str  # the referring physician's folder, as the sorter files it
    series: dict[str, int]  # instances per series UID


@dataclass
class Inventory:
    studies: list[ScannerStudy]
    associations: int = 0


def window(keeps_days: int, today: dt.date) -> tuple[dt.date, dt.date]:
    """The study dates a scanner still holds: the deadline (date + keeps_days) not past."""
    return today - dt.timedelta(days=keeps_days), today


def scanner_inventory(
    scanner: Peer,
    days: tuple[dt.date, dt.date],
    aliases: PhysicianAliases | None,
    timeout: float,
) -> Inventory:
    first, last = days
    dates = f"{first:%Y%m%d}-{last:%Y%m%d}"
    studies = []
    counter = _Counter(scanner, timeout)
    try:
        with associate(scanner, FIND_MODEL, timeout) as assoc:
            for match in studies_on(assoc, scanner, dates, timeout):
                study_date = _date(match.study_date)
                if study_date is None or not first <= study_date <= last:
                    continue  # a peer that ignores the date range
                counts = counter.counts(assoc, match.study_uid)
                lab = physician_folder(match.referring_physician, aliases)
                studies.append(ScannerStudy(match.study_uid, study_date, lab, counts))
    except PacsError as error:
        raise PeerUnavailable(f"the scanner could not be asked: {error}") from None
    return Inventory(studies, associations=1)


def pacs_counts(
    pacs: Peer, study_uids: list[str], timeout: float
) -> tuple[dict[str, dict[str, int]], int]:
    """Instances per series on the PACS of each study (an empty dict: not there), and the
    associations it took (one, or none for nothing to ask)."""
    if not study_uids:
        return {}, 0
    counter = _Counter(pacs, timeout)
    try:
        with associate(pacs, FIND_MODEL, timeout) as assoc:
            return {uid: counter.counts(assoc, uid) for uid in study_uids}, 1
    except PacsError as error:
        raise PeerUnavailable(f"the PACS could not be asked: {error}") from None


class _Counter:
    """Counts a study's instances per series; once a peer has given no counts at series
    level, it is asked at image level straight away (one query a study, not two)."""

    def __init__(self, peer: Peer, timeout: float) -> None:
        self._peer, self._timeout = peer, timeout
        self._gives_counts = True

    def counts(self, assoc: Association, study_uid: str) -> dict[str, int]:
        if not self._gives_counts:
            return image_counts_on(assoc, self._peer, study_uid, self._timeout)
        counts, self._gives_counts = series_counts_on(assoc, self._peer, study_uid, self._timeout)
        return counts


def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        return None

"""Is a study complete? The PACS's series and instance counts beside the catalog's.

Used by the API (`GET /studies/{uid}/pacs-check`), by repairs (which move only what is
missing) and by the retriever, which also records what the PACS said each series holds
(`ExpectedSeries`) so that the sorter completes a retrieved series as soon as it is whole.

At the end of a retrieval job, after its sync, `check_on_disk` holds those counts to what
the archive really has: an instance whose file is gone or cut short (a power cut before
the sync) leaves the catalog, and its series is fetched again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.counts import recount_series
from shared.catalog.models import ExpectedSeries, Instance, Series, Study
from shared.pacs import Peer
from shared.pacs_find import SeriesMatch, counted_series
from shared.retrievals import catalog_series_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesCheck:
    series_uid: str
    number: int | None
    modality: str
    description: str
    pacs_instances: int
    catalog_instances: int

    @property
    def missing(self) -> int:
        return max(self.pacs_instances - self.catalog_instances, 0)


@dataclass(frozen=True)
class StudyCheck:
    study_uid: str
    pacs: str
    series: tuple[SeriesCheck, ...]
    only_in_catalog: tuple[str, ...]  # series the PACS does not list

    @property
    def missing_series(self) -> list[str]:
        return [s.series_uid for s in self.series if s.missing]

    @property
    def missing_instances(self) -> int:
        return sum(s.missing for s in self.series)

    @property
    def complete(self) -> bool:
        return bool(self.series) and not self.missing_series


def check_study(peer: Peer, sessions: sessionmaker[Session], study_uid: str) -> StudyCheck:
    """Counted at IMAGE level where the PACS does not give NumberOfSeriesRelatedInstances."""
    on_pacs = counted_series(peer, study_uid)
    return counted_check(peer.name, study_uid, on_pacs, catalog_counts(sessions, study_uid))


def catalog_counts(sessions: sessionmaker[Session], study_uid: str) -> dict[str, int]:
    with sessions() as session:
        return catalog_series_counts(session, study_uid)


def counted_check(
    pacs: str, study_uid: str, on_pacs: list[SeriesMatch], in_catalog: dict[str, int]
) -> StudyCheck:
    """The check of the series the PACS listed, counted (`counted_series`)."""
    series = tuple(
        SeriesCheck(
            series_uid=found.series_uid,
            number=found.series_number,
            modality=found.modality,
            description=found.description,
            pacs_instances=found.instance_count or 0,
            catalog_instances=in_catalog.get(found.series_uid, 0),
        )
        for found in on_pacs
    )
    listed = {s.series_uid for s in series}
    return StudyCheck(study_uid, pacs, series, tuple(sorted(set(in_catalog) - listed)))


@dataclass(frozen=True)
class DiskCheck:
    """A study's series the catalog and the archive hold fewer instances of than expected."""

    study_uid: str
    missing: dict[str, int]  # series: instances missing
    lost: int  # instances the catalog held whose file was gone or cut short
    counted: bool  # what the PACS holds of it is recorded (else nothing to check against)

    @property
    def complete(self) -> bool:
        return self.counted and not self.missing


def check_on_disk(
    sessions: sessionmaker[Session], archive_root: Path, study_uids: Iterable[str]
) -> list[DiskCheck]:
    """Each study's recorded expectations against the instances whose file is in the archive
    with its recorded size. The rows of the others are removed (their series recounted):
    the catalog says only what is on disk, and the sorter files them anew when they come."""
    checks = []
    for study_uid in study_uids:
        with sessions.begin() as session:
            lost = _forget_lost(session, archive_root, study_uid)
            expected = {
                uid: count
                for uid, count in session.execute(
                    select(
                        ExpectedSeries.series_instance_uid, ExpectedSeries.expected_instances
                    ).where(ExpectedSeries.study_instance_uid == study_uid)
                ).all()
            }
            held = catalog_series_counts(session, study_uid)
        missing = {
            uid: count - held.get(uid, 0)
            for uid, count in expected.items()
            if held.get(uid, 0) < count
        }
        if lost:
            log.warning(
                "study %s: %d instance(s) in the catalog were not on disk; fetching again",
                study_uid,
                lost,
            )
        checks.append(DiskCheck(study_uid, missing, lost, bool(expected)))
    return checks


def _forget_lost(session: Session, archive_root: Path, study_uid: str) -> int:
    rows = session.execute(
        select(Instance.id, Instance.series_pk, Instance.path, Instance.size)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_uid)
    ).all()
    lost = [
        (row_id, series)
        for row_id, series, path, size in rows
        if _size(archive_root / path) != size
    ]
    if lost:
        session.execute(delete(Instance).where(Instance.id.in_([row_id for row_id, _ in lost])))
        recount_series(session, {series for _, series in lost})
    return len(lost)


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def record_expectations(sessions: sessionmaker[Session], study_uid: str, check: StudyCheck) -> None:
    """What the PACS holds per series, for the sorter's completion (see `ExpectedSeries`)."""
    with sessions.begin() as session:
        for series in check.series:
            session.merge(
                ExpectedSeries(
                    series_instance_uid=series.series_uid,
                    study_instance_uid=study_uid,
                    expected_instances=series.pacs_instances,
                )
            )
            session.execute(
                update(Series)
                .where(Series.series_instance_uid == series.series_uid)
                .values(expected_instances=series.pacs_instances)
                .execution_options(synchronize_session=False)
            )

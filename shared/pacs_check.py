"""Is a study complete? The PACS's series and instance counts beside the catalog's.

Used by the API (`GET /studies/{uid}/pacs-check`), by repairs (which move only what is
missing) and by the retriever, which also records what the PACS said each series holds
(`ExpectedSeries`) so that the sorter completes a retrieved series as soon as it is whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import ExpectedSeries, Series
from shared.pacs import Peer
from shared.pacs_find import count_instances, find_series
from shared.retrievals import catalog_series_counts


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
    on_pacs = find_series(peer, study_uid)
    with sessions() as session:
        in_catalog = catalog_series_counts(session, study_uid)
    series = tuple(
        SeriesCheck(
            series_uid=found.series_uid,
            number=found.series_number,
            modality=found.modality,
            description=found.description,
            pacs_instances=(
                found.instance_count
                if found.instance_count is not None
                else count_instances(peer, study_uid, found.series_uid)
            ),
            catalog_instances=in_catalog.get(found.series_uid, 0),
        )
        for found in on_pacs
    )
    listed = {s.series_uid for s in series}
    return StudyCheck(study_uid, peer.name, series, tuple(sorted(set(in_catalog) - listed)))


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

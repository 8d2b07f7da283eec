"""Deciding that a series is complete, once per generation, and saying so.

DICOM never says "this series is done". A series whose last instance arrived
more than the stable age ago is taken to be complete, and so is one that holds as many
instances as the PACS said it has when dcmdb retrieved it (`ExpectedSeries`): one conditional UPDATE
moves it from ``receiving`` to ``complete``, so of several sorters running this
at once exactly one completes it. The ``series.completed`` event is published
afterwards and marked as announced only once the broker confirmed it (an
outbox): a sorter that dies in between announces it again when it comes back,
and the converter knows a generation it has already converted. A late
instance reopens the series with a new generation (``rows.BatchRows``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import COMPLETE, RECEIVING, Series, Study
from shared.messages import SeriesCompleted


def complete_stable_series(
    sessions: sessionmaker[Session], stable_age: float, now: datetime | None = None
) -> int:
    """Mark complete every series that received nothing for ``stable_age`` seconds, and
    every series that holds all the instances a retrieval from the PACS said it has."""
    now = now or datetime.now(UTC)
    with sessions.begin() as session:
        result = session.execute(
            update(Series)
            .where(
                Series.completion == RECEIVING,
                or_(
                    Series.last_received_at < now - timedelta(seconds=stable_age),
                    Series.instance_count >= Series.expected_instances,
                ),
            )
            .values(completion=COMPLETE, completed_at=now, completion_announced=False)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def unannounced(sessions: sessionmaker[Session], limit: int = 500) -> list[SeriesCompleted]:
    """The completions not yet confirmed as published, oldest first."""
    query = (
        select(Series, Study.study_instance_uid)
        .join(Study, Series.study_pk == Study.id)
        .where(
            Series.completion == COMPLETE,
            Series.completion_announced.is_(False),
            Series.instance_count > 0,
        )
        .order_by(Series.completed_at)
        .limit(limit)
    )
    with sessions() as session:
        return [
            SeriesCompleted(
                study_instance_uid=study_uid,
                series_instance_uid=series.series_instance_uid,
                generation=series.generation,
                instances=series.instance_count,
                reason=(
                    "expected count reached"
                    if series.expected_instances is not None
                    and series.instance_count >= series.expected_instances
                    else "stable"
                ),
            )
            for series, study_uid in session.execute(query)
        ]


def mark_announced(sessions: sessionmaker[Session], event: SeriesCompleted) -> None:
    with sessions.begin() as session:
        session.execute(
            update(Series)
            .where(
                Series.series_instance_uid == event.series_instance_uid,
                Series.generation == event.generation,
            )
            .values(completion_announced=True)
            .execution_options(synchronize_session=False)
        )

"""Deciding that a series is complete, once per generation, and saying so.

DICOM never says "this series is done". A series whose last instance arrived
more than the stable age ago is taken to be complete, and so is one that holds as many
instances as the PACS said it has when dcmdb retrieved it (`ExpectedSeries`): one conditional UPDATE
moves it from ``receiving`` to ``complete``, so of several sorters running this
at once exactly one completes it. The ``series.completed`` event is published
afterwards and marked as announced only once the broker confirmed it (an
outbox), by one sorter holding the series row, so several sorters publish it
once: a sorter that dies in between announces it again when it comes back, and
the converter knows a generation it has already converted. A late instance
reopens the series with a new generation (``rows.BatchRows``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Row, Select, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared import outbox
from shared.catalog.models import Series, Study
from shared.catalog.states import Completion
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
                Series.completion == Completion.RECEIVING,
                or_(
                    Series.last_received_at < now - timedelta(seconds=stable_age),
                    Series.instance_count >= Series.expected_instances,
                ),
            )
            .values(completion=Completion.COMPLETE, completed_at=now, completion_announced=False)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def unannounced(sessions: sessionmaker[Session], limit: int = 500) -> list[SeriesCompleted]:
    """The completions not yet confirmed as published, oldest first."""
    with sessions() as session:
        return [_completed(row[0], row[1]) for row in session.execute(_unannounced().limit(limit))]


def announce_next(
    sessions: sessionmaker[Session], publish: Callable[[SeriesCompleted], None]
) -> SeriesCompleted | None:
    """Publish the oldest unannounced completion and mark it announced; None when none waits.

    The series row stays locked from the moment it is read until it is marked, with
    ``publish`` (which returns once the broker confirmed) in between (`shared.outbox`):
    each completion is published once. ``publish`` failing leaves it unannounced for the
    next round.
    """
    return outbox.announce_next(
        sessions,
        _unannounced(),
        Series,
        lambda row: _completed(row[0], row[1]),
        _mark_announced,
        publish,
    )


def _mark_announced(row: Row[Series, str]) -> None:
    row[0].completion_announced = True


def _unannounced() -> Select[Series, str]:
    return (
        select(Series, Study.study_instance_uid)
        .join(Study, Series.study_pk == Study.id)
        .where(
            Series.completion == Completion.COMPLETE,
            Series.completion_announced.is_(False),
            Series.instance_count > 0,
        )
        .order_by(Series.completed_at, Series.id)
    )


def _completed(series: Series, study_uid: str) -> SeriesCompleted:
    expected = series.expected_instances
    return SeriesCompleted(
        study_instance_uid=study_uid,
        series_instance_uid=series.series_instance_uid,
        generation=series.generation,
        instances=series.instance_count,
        reason=(
            "expected count reached"
            if expected is not None and series.instance_count >= expected
            else "stable"
        ),
    )

"""Converting series again: after an upgrade that changes what the converter writes, or on
an admin's request (``dcmdb reconvert``).

A series is converted again by marking its completion unannounced and its conversion
pending: the sorter's outbox (services/sorter/completion.py) publishes ``series.completed``
for the same generation again, and the converter, seeing the conversion pending, converts
and replaces the old files. Nothing is deleted before the new outputs are written.

Each conversion records the policy it was made by (`CONVERSION_POLICY`). Policies:

1. dicom2nifti first for every stack of single-frame images, dcm2niix where it failed.
2. MR volumes by dcm2niix (gradient tables, acquisition keys in the sidecar), a geometry
   guard on every volume, and what ``dcm2niix -i y`` skips skipped rather than failed.

`bring_up_to_date` runs at the converter's start. It converts again, once, the series whose
outputs policy 2 changes: every MR series converted or failed under policy 1 (Siemens
mosaics in other than axial orientation were mirrored or misplaced, diffusion volumes had no
gradient table, sidecars lacked what distortion and slice-timing correction read), and
every failed series (it may now be skipped). The others get the new policy's mark, so a
second start finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import Series, Study
from shared.catalog.states import Completion, ConversionState

CONVERSION_POLICY = 2


@dataclass(frozen=True)
class Selection:
    """Which series an admin asks to convert again; every given criterion must hold."""

    study_uid: str | None = None
    series_uid: str | None = None
    physician_folder: str | None = None
    first_date: str | None = None  # StudyDate, YYYYMMDD, inclusive
    last_date: str | None = None


@dataclass(frozen=True)
class Queued:
    study_uid: str
    series_uid: str
    folder: str  # physician/study/series
    was: str  # the conversion state before


def bring_up_to_date(sessions: sessionmaker[Session]) -> list[Queued]:
    """Queue the series an older policy converted wrongly; mark the rest as current."""
    older = or_(Series.conversion_policy.is_(None), Series.conversion_policy < CONVERSION_POLICY)
    done = and_(
        Series.completion == Completion.COMPLETE,
        Series.conversion.in_((ConversionState.CONVERTED, ConversionState.FAILED)),
    )
    changed = or_(Series.modality == "MR", Series.conversion == ConversionState.FAILED)
    with sessions.begin() as session:
        queued = _queue(session, _listed().where(older, done, changed))
        session.execute(
            update(Series)
            .where(older, Series.conversion != ConversionState.PENDING)
            .values(conversion_policy=CONVERSION_POLICY)
            .execution_options(synchronize_session=False)
        )
    return queued


def reconvert(
    sessions: sessionmaker[Session], selection: Selection, *, dry_run: bool = False
) -> list[Queued]:
    """Queue every complete, converted (or skipped or failed) series `selection` names."""
    query = _listed().where(
        Series.completion == Completion.COMPLETE,
        Series.conversion != ConversionState.PENDING,
        *_criteria(selection),
    )
    with sessions.begin() as session:
        if dry_run:
            return [_queued(series, study) for series, study in session.execute(query)]
        return _queue(session, query)


def _criteria(selection: Selection) -> list[ColumnElement[bool]]:
    criteria: list[ColumnElement[bool]] = []
    if selection.study_uid is not None:
        criteria.append(Study.study_instance_uid == selection.study_uid)
    if selection.series_uid is not None:
        criteria.append(Series.series_instance_uid == selection.series_uid)
    if selection.physician_folder is not None:
        criteria.append(Study.physician_folder == selection.physician_folder)
    if selection.first_date is not None:
        criteria.append(Study.study_date >= selection.first_date)
    if selection.last_date is not None:
        criteria.append(Study.study_date <= selection.last_date)
    return criteria


def _listed() -> Select[Series, Study]:
    return (
        select(Series, Study)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.evicting_at.is_(None), Series.instance_count > 0)
        .order_by(Study.study_date, Study.id, Series.id)
    )


def _queue(session: Session, query: Select[Series, Study]) -> list[Queued]:
    queued = []
    for series, study in session.execute(query.with_for_update(of=Series)):
        queued.append(_queued(series, study))
        series.conversion = ConversionState.PENDING
        series.conversion_reason = ""
        series.completion_announced = False  # the sorter announces the completion again
    return queued


def _queued(series: Series, study: Study) -> Queued:
    folder = f"{study.physician_folder}/{study.folder}/{series.folder}"
    return Queued(study.study_instance_uid, series.series_instance_uid, folder, series.conversion)

"""What the converter reads from and writes to the catalog.

A completion is converted only while it is the series' newest generation: a
series reopened by a late instance has a new completion coming, and a
completion already converted (a redelivery) is not converted twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.converter.conversion import Conversion
from services.converter.isolation import Job
from shared.catalog.models import Instance, NiftiOutput, Series
from shared.catalog.states import Completion, ConversionState
from shared.errors import TransientError
from shared.messages import (
    Event,
    SeriesCompleted,
    SeriesConverted,
    SeriesFailed,
    SeriesSkipped,
)
from shared.reconversion import CONVERSION_POLICY

NIFTI_FOLDER = "nifti"  # in each study folder

T = TypeVar("T")


def _catalog(action: Callable[[], T]) -> T:
    try:
        return action()
    except OperationalError as exc:
        raise TransientError(f"catalog unavailable: {exc.orig}") from exc


def job_for(sessions: sessionmaker[Session], archive: Path, event: SeriesCompleted) -> Job | None:
    """The conversion this completion asks for; None when it is stale or done already."""

    def load() -> Job | None:
        with sessions() as session:
            series = _series(session, event.series_instance_uid)
            if series is None or series.generation != event.generation:
                return None
            if series.completion != Completion.COMPLETE:
                return None
            if (
                series.converted_generation == event.generation
                and series.conversion != ConversionState.PENDING
            ):
                return None
            paths = session.scalars(select(Instance.path).where(Instance.series_pk == series.id))
            study = series.study
            return Job(
                files=tuple(archive / path for path in sorted(paths)),
                out_dir=archive / study.physician_folder / study.folder / NIFTI_FOLDER,
                base_name=series.folder,
                study_instance_uid=event.study_instance_uid,
                series_instance_uid=event.series_instance_uid,
            )

    return _catalog(load)


def record(
    sessions: sessionmaker[Session], archive: Path, event: SeriesCompleted, result: Conversion
) -> bool:
    """Store the outcome; False when the series was reopened meanwhile (it converts again)."""

    def write() -> tuple[bool, set[str]]:
        with sessions.begin() as session:
            series = _series(session, event.series_instance_uid, lock=True)
            if series is None or series.generation != event.generation:
                return False, set()
            before = {p for o in series.outputs for p in o.paths}
            series.outputs.clear()
            now = datetime.now(UTC)
            for output in result.outputs:
                series.outputs.append(
                    NiftiOutput(
                        path=_relative(output.nifti, archive),
                        sidecar_path=_relative(output.sidecar, archive),
                        bval_path=_relative(output.bval, archive) if output.bval else None,
                        bvec_path=_relative(output.bvec, archive) if output.bvec else None,
                        engine=output.engine,
                        size=output.nifti.stat().st_size,
                        created_at=now,
                    )
                )
            series.conversion = result.status
            series.conversion_reason = result.reason
            series.converted_generation = event.generation
            series.conversion_policy = CONVERSION_POLICY
            after = {p for o in series.outputs for p in o.paths}
            return True, before - after

    recorded, stale = _catalog(write)
    for path in stale:  # outputs of an earlier generation this one did not write again
        (archive / path).unlink(missing_ok=True)
    return recorded


def outcome(event: SeriesCompleted, result: Conversion, archive: Path) -> Event:
    """The event that announces what became of a completed series."""
    series = {
        "study_instance_uid": event.study_instance_uid,
        "series_instance_uid": event.series_instance_uid,
        "generation": event.generation,
    }
    if result.status == ConversionState.CONVERTED:
        outputs = tuple(_relative(o.nifti, archive) for o in result.outputs)
        engines = tuple(sorted({o.engine for o in result.outputs}))
        return SeriesConverted.model_validate({**series, "outputs": outputs, "engines": engines})
    kind = SeriesSkipped if result.status == ConversionState.SKIPPED else SeriesFailed
    return kind.model_validate({**series, "reason": result.reason})


def _series(session: Session, uid: str, lock: bool = False) -> Series | None:
    query = select(Series).where(Series.series_instance_uid == uid)
    return session.scalar(query.with_for_update() if lock else query)


def _relative(path: Path, archive: Path) -> str:
    return str(path.relative_to(archive))

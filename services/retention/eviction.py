"""Evicting one study so that it is either listed and whole, or gone.

Three steps, each safe to repeat, so that a crash anywhere leaves nothing half-visible
and the next round (of this or another retention process) finishes the job:

1. ``claim``, one transaction: the study row is locked, found still listed, unpinned and
   not in flight, marked ``evicting`` (from the commit on, every reader treats it as
   gone and the sorter files nothing into it) and an `Eviction` row opened;
2. ``remove_files``: under the study row's lock, its folder (instances and ``nifti/``)
   is renamed into ``.evicting/`` in the archive root, then deleted from there. The
   rename happens only while the row exists, so a folder the sorter makes again for the
   same study after step 3 is never touched. The copies of its instances that others
   replaced (``history/<lab>/<study>/``, `shared.overwrite`) are deleted under the lock.
   Before the folder is deleted, the study's BIDS session leaves its lab's dataset
   (`shared.bids.dataset.remove_study`): its hard links would keep the space taken;
3. ``close``, one transaction: every catalog row of the study (instances, NIfTI outputs,
   series, expected counts, replaced copies, the study, and its patient when no other
   study is left) deleted and the `Eviction` row closed; ``study.evicted`` is published afterwards
   (an outbox: see `announce_next`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Row, Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from shared import outbox
from shared.bids import dataset, pseudonyms
from shared.catalog.models import (
    LISTED,
    Eviction,
    ExpectedSeries,
    Instance,
    InstanceHistory,
    NiftiOutput,
    Patient,
    Series,
    Study,
)
from shared.messages import StudyEvicted
from shared.naming import resolve_under
from shared.retention import Candidate, in_flight, study_sizes

log = logging.getLogger(__name__)

TRASH = ".evicting"  # in the archive root; no lab folder starts with a dot


@dataclass(frozen=True)
class Evicted:
    study_uid: str
    reason: str
    size_bytes: int


def claim(
    sessions: sessionmaker[Session], candidate: Candidate, reason: str, stable_age: float
) -> int | None:
    """Mark the study evicting and open its `Eviction` row; its id, or None when the study
    is gone, pinned or in flight by now (or another retention process took it)."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        study = session.scalar(
            select(Study).where(Study.id == candidate.pk, LISTED).with_for_update()
        )
        if study is None or study.pinned:
            return None
        # Read after the lock: a sorter that filed into the study committed before it.
        if in_flight(session, [study.id], now, stable_age):
            return None
        series, instances = session.execute(
            select(func.count(Series.id), func.coalesce(func.sum(Series.instance_count), 0)).where(
                Series.study_pk == study.id
            )
        ).one()
        study.evicting_at = now
        eviction = Eviction(
            study_instance_uid=study.study_instance_uid,
            physician_folder=study.physician_folder,
            folder=study.folder,
            study_date=study.study_date,
            received_at=study.received_at,
            reason=reason,
            series_count=int(series),
            instance_count=int(instances),
            size_bytes=study_sizes(session, [study.id]).get(study.id, 0),
            started_at=now,
            announced=False,
        )
        session.add(eviction)
        session.flush()
        return eviction.id


def unfinished(sessions: sessionmaker[Session]) -> list[int]:
    """Evictions started and not closed: what a crash (or a stop) left behind."""
    with sessions() as session:
        return list(
            session.scalars(
                select(Eviction.id)
                .where(Eviction.announced.is_(False), Eviction.evicted_at.is_(None))
                .order_by(Eviction.id)
            )
        )


def finish(
    sessions: sessionmaker[Session],
    archive: Path,
    eviction_id: int,
    history: Path | None = None,
    bids_dir: Path | None = None,
) -> Evicted | None:
    """Steps 2 and 3; None when another retention process closed it first. ``history``: the
    data directory's folder of replaced copies (none there when None); ``bids_dir``:
    DCMDB_BIDS_DIR, where the labs' BIDS datasets are when not in their lab folders."""
    remove_files(sessions, archive, eviction_id, history, bids_dir)
    return close(sessions, eviction_id)


def remove_files(
    sessions: sessionmaker[Session],
    archive: Path,
    eviction_id: int,
    history: Path | None = None,
    bids_dir: Path | None = None,
) -> None:
    trash = archive / TRASH / str(eviction_id)
    with sessions.begin() as session:
        eviction = session.get(Eviction, eviction_id)
        if eviction is None or _locked_study(session, eviction) is None:
            return
        labels = pseudonyms.existing(session, eviction.study_instance_uid)
        lab = resolve_under(archive, eviction.physician_folder)
        folder = resolve_under(lab, eviction.folder)
        if folder.exists():
            _make_trash(trash.parent)
            os.rename(folder, trash)
        with contextlib.suppress(OSError):  # not empty: other studies of the lab
            lab.rmdir()
        if history is not None:  # small, and on a disk of its own perhaps: deleted in place
            replaced = resolve_under(history, eviction.physician_folder, eviction.folder)
            shutil.rmtree(replaced, ignore_errors=True)
            if replaced.exists():
                raise OSError(f"cannot delete {replaced}")
            with contextlib.suppress(OSError):
                replaced.parent.rmdir()
    # The BIDS session's hard links hold the files' space: it goes before the space counts
    # as freed, or the next round would evict studies more.
    if labels is not None:
        dataset.remove_study(archive, bids_dir, labels)
    shutil.rmtree(trash, ignore_errors=True)  # another process may be deleting it too
    if trash.exists():
        raise OSError(f"cannot delete {trash}")


def _make_trash(folder: Path) -> None:
    """The folder of studies being deleted: this service's alone (0700), not a lab's."""
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o700)


def close(sessions: sessionmaker[Session], eviction_id: int) -> Evicted | None:
    with sessions.begin() as session:
        eviction = session.get(Eviction, eviction_id)
        if eviction is None:
            return None
        study = _locked_study(session, eviction)
        if study is None:
            return None
        series = select(Series.id).where(Series.study_pk == study.id)
        session.execute(delete(NiftiOutput).where(NiftiOutput.series_pk.in_(series)))
        session.execute(delete(Instance).where(Instance.series_pk.in_(series)))
        session.execute(delete(Series).where(Series.study_pk == study.id))
        session.execute(
            delete(ExpectedSeries).where(
                ExpectedSeries.study_instance_uid == study.study_instance_uid
            )
        )
        session.execute(
            delete(InstanceHistory).where(
                InstanceHistory.study_instance_uid == study.study_instance_uid
            )
        )
        patient_pk = study.patient_pk
        session.execute(delete(Study).where(Study.id == study.id))
        _delete_patient_if_alone(session, patient_pk)
        session.execute(
            update(Eviction)
            .where(Eviction.id == eviction_id)
            .values(evicted_at=datetime.now(UTC), announced=False)
        )
        return Evicted(eviction.study_instance_uid, eviction.reason, eviction.size_bytes)


def _locked_study(session: Session, eviction: Eviction) -> Study | None:
    """The study being evicted, locked; None once its rows are gone."""
    return session.scalar(
        select(Study)
        .where(
            Study.study_instance_uid == eviction.study_instance_uid,
            Study.evicting_at.is_not(None),
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _delete_patient_if_alone(session: Session, patient_pk: int) -> None:
    """A patient without studies goes too: its name is patient data dcmdb no longer needs."""
    others = select(Study.id).where(Study.patient_pk == patient_pk).exists()
    try:
        with session.begin_nested():  # a sorter filing a new study of the patient meanwhile
            session.execute(delete(Patient).where(Patient.id == patient_pk, ~others))
    except IntegrityError:
        log.debug("the patient has a new study meanwhile; kept")


def unannounced(sessions: sessionmaker[Session], limit: int = 500) -> list[StudyEvicted]:
    """The closed evictions not yet confirmed as published, oldest first."""
    with sessions() as session:
        rows = session.scalars(_unannounced().limit(limit))
        return [_event(row) for row in rows]


def announce_next(
    sessions: sessionmaker[Session], publish: Callable[[StudyEvicted], None]
) -> StudyEvicted | None:
    """Publish the oldest unannounced eviction and mark it announced; None when none waits.

    As the sorter's completions (`shared.outbox`): the `Eviction` row stays locked from
    the moment it is read until it is marked, so retention processes announcing at once
    publish each eviction once; ``publish`` failing leaves it for the next round.
    """
    return outbox.announce_next(
        sessions,
        _unannounced(),
        Eviction,
        lambda row: _event(row[0]),
        _mark_announced,
        publish,
    )


def _unannounced() -> Select[Eviction]:
    return (
        select(Eviction)
        .where(Eviction.announced.is_(False), Eviction.evicted_at.is_not(None))
        .order_by(Eviction.id)
    )


def _mark_announced(row: Row[Eviction]) -> None:
    row[0].announced = True


def _event(row: Eviction) -> StudyEvicted:
    assert row.evicted_at is not None
    return StudyEvicted(
        eviction_id=row.id,
        study_instance_uid=row.study_instance_uid,
        physician_folder=row.physician_folder,
        folder=f"{row.physician_folder}/{row.folder}",
        reason=row.reason,
        series=row.series_count,
        instances=row.instance_count,
        size_bytes=row.size_bytes,
        received_at=row.received_at,
        evicted_at=row.evicted_at,
    )

"""Filing one received instance: archive tree first, catalog second, incoming last.

The order makes every step safe to repeat after a crash:

1. read the file in ``incoming/`` once (header and checksum);
2. in one catalog transaction: find or create patient, study and series (their
   folders are decided once, when first seen, and never collide), place the
   file in the archive by linking it under a temporary name and renaming it
   over the destination (newest wins), then record the instance and commit;
3. remove the file from ``incoming/``.

A crash before 3 leaves the file in ``incoming/``; the broker redelivers the
event (or the receiver's sweep announces it again) and the same steps give the
same result. An event whose file is gone and whose reception the catalog
already holds is a duplicate: it is acknowledged and its ``instance.filed``
event sent again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import Instance, Patient, Series, Study
from shared.errors import TransientError
from shared.headers import identifiers_of, integer, text
from shared.messages import InstanceFiled, InstanceReceived
from shared.naming import (
    PhysicianAliases,
    instance_file_name,
    physician_folder,
    resolve_under,
    series_folder_name,
    study_folder_name,
    with_uid_suffix,
)

log = logging.getLogger(__name__)

ATTEMPTS = 10  # concurrent sorters may race to create the same rows, or deadlock on them
_RETRYABLE = frozenset({"40P01", "40001"})  # PostgreSQL: deadlock detected, serialization failure


@dataclass(frozen=True)
class Outcome:
    """What filing did; ``filed`` is None when there was nothing to announce."""

    filed: InstanceFiled | None
    duplicate: bool = False
    replaced: bool = False


@dataclass(frozen=True)
class _Arrival:
    """A received file, read once: its header and checksum."""

    event: InstanceReceived
    source: Path
    header: Dataset
    size: int
    checksum: str


class Filer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        data_dir: Path,
        archive_root: Path,
        quarantine_dir: Path,
        aliases: PhysicianAliases | None = None,
    ) -> None:
        self._sessions = sessions
        self._data_dir = data_dir
        self._archive = archive_root
        self._quarantine = quarantine_dir
        self._aliases = aliases
        archive_root.mkdir(parents=True, exist_ok=True)

    def file(self, event: InstanceReceived) -> Outcome:
        return self.file_batch([event])[0]

    def file_batch(self, events: list[InstanceReceived]) -> list[Outcome]:
        """File every event's instance, in one catalog transaction."""
        outcomes: list[Outcome | None] = []
        arrivals: list[_Arrival] = []
        for event in events:
            arrival_or_outcome = self._read(event)
            if isinstance(arrival_or_outcome, _Arrival):
                arrivals.append(arrival_or_outcome)
                outcomes.append(None)
            else:
                outcomes.append(arrival_or_outcome)
        recorded = iter(self._record_all(arrivals) if arrivals else [])
        for arrival in arrivals:
            arrival.source.unlink(missing_ok=True)
        return [outcome if outcome is not None else next(recorded) for outcome in outcomes]

    def _read(self, event: InstanceReceived) -> _Arrival | Outcome:
        source = self._data_dir / event.incoming_path
        try:
            content = source.read_bytes()
        except FileNotFoundError:
            return self._already_filed(event)
        except OSError as exc:
            raise TransientError(f"cannot read {event.incoming_path}: {exc}") from exc
        try:
            header = dcmread(BytesIO(content), stop_before_pixels=True, force=True)
            identifiers_of(header)
        except Exception as exc:
            self._quarantine_file(source, f"unreadable at sorting: {exc}")
            return Outcome(filed=None)
        checksum = hashlib.sha256(content).hexdigest()
        return _Arrival(event, source, header, len(content), checksum)

    def _record_all(self, arrivals: list[_Arrival]) -> list[Outcome]:
        for attempt in range(1, ATTEMPTS + 1):
            superseded: list[Path] = []
            placements: list[tuple[Path, Path]] = []
            try:
                with self._sessions.begin() as session:
                    outcomes = [self._record(session, a, superseded, placements) for a in arrivals]
                    # Every conflict with a concurrent sorter surfaces in this flush, before any
                    # file is touched; from here to the commit the rows stay locked.
                    session.flush()
                    for source, destination in placements:
                        _place(source, destination)
                    for folder in {d.parent for _, d in placements}:  # durable before the commit
                        _fsync_directory(folder)
                break
            except IntegrityError as exc:
                if attempt == ATTEMPTS:
                    raise TransientError(f"catalog conflict persists: {exc.orig}") from exc
                log.debug("a concurrent sorter created the same row; trying again")
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) not in _RETRYABLE or attempt == ATTEMPTS:
                    raise TransientError(f"catalog unavailable: {exc.orig}") from exc
                log.debug("deadlock with a concurrent sorter; trying again")
            except OSError as exc:
                raise TransientError(f"cannot write to the archive: {exc}") from exc
            time.sleep(random.uniform(0, 0.01 * attempt))  # let the other sorter commit first
        for path in superseded:
            path.unlink(missing_ok=True)
        return outcomes

    def _record(
        self,
        session: Session,
        arrival: _Arrival,
        superseded: list[Path],
        placements: list[tuple[Path, Path]],
    ) -> Outcome:
        event, header = arrival.event, arrival.header
        uids = identifiers_of(header)
        existing = session.scalar(  # locked: a concurrent sorter waits here for our commit
            select(Instance)
            .where(Instance.sop_instance_uid == uids.sop_instance_uid)
            .with_for_update()
        )
        if existing and _as_utc(existing.received_at) > event.received_at:
            log.info("discarding an older copy of an instance already filed")
            return Outcome(filed=None, duplicate=True)
        study = self._study(session, header, event.received_at)
        series = self._series(session, study, header, event.received_at)
        relative = "/".join(
            (
                study.physician_folder,
                study.folder,
                series.folder,
                instance_file_name(uids.sop_instance_uid),
            )
        )
        destination = resolve_under(self._archive, *relative.split("/"))
        placements.append((arrival.source, destination))  # placed once every row is flushed
        replaced = bool(existing and existing.sha256 != arrival.checksum)
        if existing and existing.path != relative:
            superseded.append(self._archive / existing.path)
        instance = existing or Instance(sop_instance_uid=uids.sop_instance_uid, replacements=0)
        instance.series_pk = series.id
        instance.sop_class_uid = uids.sop_class_uid
        instance.transfer_syntax_uid = event.transfer_syntax_uid
        instance.instance_number = integer(header, "InstanceNumber")
        instance.path = relative
        instance.size = arrival.size
        instance.sha256 = arrival.checksum
        instance.received_at = event.received_at
        instance.calling_ae = event.calling_ae
        if replaced:
            instance.replacements += 1
            log.info("replaced an instance with a newer copy of different content")
        session.add(instance)
        series.last_received_at = max(_as_utc(series.last_received_at), event.received_at)
        study.last_received_at = max(_as_utc(study.last_received_at), event.received_at)
        return Outcome(
            filed=InstanceFiled(
                sop_instance_uid=uids.sop_instance_uid,
                study_instance_uid=uids.study_instance_uid,
                series_instance_uid=uids.series_instance_uid,
                archive_path=relative,
                physician_folder=study.physician_folder,
                replaced=replaced,
            ),
            duplicate=existing is not None and not replaced,
            replaced=replaced,
        )

    def _study(self, session: Session, header: Dataset, received_at: datetime) -> Study:
        uid = text(header, "StudyInstanceUID")
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if study:
            return study
        patient = self._patient(session, header)
        physician = physician_folder(header.get("ReferringPhysicianName"), self._aliases)
        folder = study_folder_name(
            text(header, "StudyDate"), text(header, "PatientID"), text(header, "StudyDescription")
        )
        taken = select(Study.id).where(Study.physician_folder == physician, Study.folder == folder)
        if session.scalar(taken) is not None:
            folder = with_uid_suffix(folder, uid)
        study = Study(
            study_instance_uid=uid,
            patient_pk=patient.id,
            physician_name=text(header, "ReferringPhysicianName"),
            physician_folder=physician,
            folder=folder,
            study_date=_dicom_date(text(header, "StudyDate")),
            study_time=text(header, "StudyTime") or None,
            description=text(header, "StudyDescription"),
            accession_number=text(header, "AccessionNumber"),
            received_at=received_at,
            last_received_at=received_at,
        )
        session.add(study)
        session.flush()
        return study

    def _series(
        self, session: Session, study: Study, header: Dataset, received_at: datetime
    ) -> Series:
        uid = text(header, "SeriesInstanceUID")
        series = session.scalar(select(Series).where(Series.series_instance_uid == uid))
        if series:
            return series
        number = integer(header, "SeriesNumber")
        description = text(header, "SeriesDescription") or text(header, "ProtocolName")
        folder = series_folder_name(number, description or text(header, "Modality"))
        taken = select(Series.id).where(Series.study_pk == study.id, Series.folder == folder)
        if session.scalar(taken) is not None:
            folder = with_uid_suffix(folder, uid)
        series = Series(
            series_instance_uid=uid,
            study_pk=study.id,
            folder=folder,
            modality=text(header, "Modality"),
            series_number=number,
            description=description,
            received_at=received_at,
            last_received_at=received_at,
        )
        session.add(series)
        session.flush()
        return series

    def _patient(self, session: Session, header: Dataset) -> Patient:
        patient_id = text(header, "PatientID")
        patient = session.scalar(select(Patient).where(Patient.patient_id == patient_id))
        if patient is None:
            patient = Patient(patient_id=patient_id, patient_name=text(header, "PatientName"))
            session.add(patient)
            session.flush()
        return patient

    def _already_filed(self, event: InstanceReceived) -> Outcome:
        with self._sessions() as session:
            row = session.execute(
                select(Instance, Study)
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .where(Instance.sop_instance_uid == event.sop_instance_uid)
            ).first()
        if row is None or _as_utc(row.Instance.received_at) != event.received_at:
            log.info("nothing to file: the file of this event was filed or superseded earlier")
            return Outcome(filed=None, duplicate=True)
        instance, study = row.Instance, row.Study
        return Outcome(
            filed=InstanceFiled(
                sop_instance_uid=event.sop_instance_uid,
                study_instance_uid=event.study_instance_uid,
                series_instance_uid=event.series_instance_uid,
                archive_path=instance.path,
                physician_folder=study.physician_folder,
                replaced=False,
            ),
            duplicate=True,
        )

    def _quarantine_file(self, source: Path, reason: str) -> None:
        log.error("moving an unreadable file to quarantine: %s", reason)
        self._quarantine.mkdir(parents=True, exist_ok=True)
        target = self._quarantine / source.name
        shutil.move(source, target)
        target.with_suffix(".txt").write_text(reason + "\n")


def _place(source: Path, destination: Path) -> None:
    """Put ``source``'s bytes at ``destination`` atomically, keeping ``source``."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{uuid.uuid4().hex}.partial")
    try:
        os.link(source, temporary)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_synced(source, temporary)  # the archive is on another filesystem
    try:
        os.replace(temporary, destination)
    finally:
        # rename() does nothing when both names are links to one file (the source was placed
        # already: a redelivery after a crash, a batch retried): the temporary name stays.
        temporary.unlink(missing_ok=True)


def _copy_synced(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "xb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dicom_date(value: str) -> str | None:
    return value if len(value) == 8 and value.isdigit() else None


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time dcmdb stores is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

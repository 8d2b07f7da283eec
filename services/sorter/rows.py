"""The catalog rows one batch of arrivals touches, loaded once and written once.

A batch reads every row it needs in three queries (instances locked against
concurrent sorters), creates the studies and series it meets for the first
time, and leaves the rest to one flush at the end. A study's or series' folder
is decided when the row is created, never again, and never collides with
another folder in the same place (case-insensitively, for SMB shares).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.catalog.models import (
    ExpectedSeries,
    Instance,
    InstanceHistory,
    Patient,
    Series,
    Study,
)
from shared.catalog.states import Completion, ConversionState
from shared.errors import TransientError
from shared.headers import Header
from shared.naming import (
    PhysicianAliases,
    physician_folder,
    series_folder_name,
    study_folder_name,
    with_uid_suffix,
)


class BatchRows:
    def __init__(
        self,
        session: Session,
        aliases: PhysicianAliases | None,
        sop_uids: set[str],
        study_uids: set[str],
        series_uids: set[str],
    ) -> None:
        self._session = session
        self._aliases = aliases
        # Locked: a concurrent sorter filing the same instance waits for our commit.
        self.instances = {
            row.sop_instance_uid: row
            for row in session.scalars(
                select(Instance).where(Instance.sop_instance_uid.in_(sop_uids)).with_for_update()
            )
        }
        # Locked: retention marks a study evicting only between batches that file into it.
        self._studies = {
            row.study_instance_uid: row
            for row in session.scalars(
                select(Study).where(Study.study_instance_uid.in_(study_uids)).with_for_update()
            )
        }
        if any(study.evicting_at is not None for study in self._studies.values()):
            # Once its rows are gone the instance starts the study afresh.
            raise TransientError("a study of the batch is being evicted; filing it waits")
        # Locked too: the completion of a series waits for the arrivals filed with it.
        self._series = {
            row.series_instance_uid: row
            for row in session.scalars(
                select(Series).where(Series.series_instance_uid.in_(series_uids)).with_for_update()
            )
        }

        # What a retrieval from the PACS said new series hold (see `completion`).
        self._expected = dict(
            session.execute(
                select(ExpectedSeries.series_instance_uid, ExpectedSeries.expected_instances).where(
                    ExpectedSeries.series_instance_uid.in_(series_uids - self._series.keys())
                )
            ).all()
        )

    def instance(self, sop_instance_uid: str) -> Instance:
        """The catalog row of this SOP instance, a new one (added) if there is none."""
        row = self.instances.get(sop_instance_uid)
        if row is None:
            row = Instance(sop_instance_uid=sop_instance_uid, replacements=0)
            self._session.add(row)
            self.instances[sop_instance_uid] = row
        return row

    def lab_of(self, study_uid: str) -> str | None:
        """The lab folder the study is filed under; None when it is not filed yet."""
        study = self._studies.get(study_uid)
        return study.physician_folder if study is not None else None

    def add_history(self, row: InstanceHistory) -> None:
        """Record a copy kept in history/, once (a filing done again finds it recorded)."""
        recorded = select(InstanceHistory.id).where(
            InstanceHistory.sop_instance_uid == row.sop_instance_uid,
            InstanceHistory.old_sha256 == row.old_sha256,
        )
        if self._session.scalar(recorded) is None:
            self._session.add(row)

    def study(self, uid: str, header: Header, received_at: datetime) -> Study:
        study = self._studies.get(uid) or self._create_study(uid, header, received_at)
        study.last_received_at = max(study.last_received_at, received_at)
        return study

    def series(self, uid: str, study: Study, header: Header, received_at: datetime) -> Series:
        series = self._series.get(uid) or self._create_series(uid, study, header, received_at)
        series.last_received_at = max(series.last_received_at, received_at)
        # A late arrival: complete and convert it again.
        if series.completion == Completion.COMPLETE:
            series.completion = Completion.RECEIVING
            series.generation += 1
            series.completed_at = None
            series.completion_announced = False
            series.conversion = ConversionState.PENDING
        return series

    def _create_study(self, uid: str, header: Header, received_at: datetime) -> Study:
        physician = physician_folder(header.text("ReferringPhysicianName"), self._aliases)
        folder = study_folder_name(
            header.text("StudyDate"), header.text("PatientID"), header.text("StudyDescription")
        )
        taken = select(Study.id).where(
            Study.physician_folder == physician, func.lower(Study.folder) == folder.lower()
        )
        if self._session.scalar(taken) is not None:
            folder = with_uid_suffix(folder, uid)
        study = Study(
            study_instance_uid=uid,
            patient_pk=self._patient(header).id,
            physician_name=header.text("ReferringPhysicianName"),
            physician_folder=physician,
            folder=folder,
            study_date=_dicom_date(header.text("StudyDate")),
            study_time=header.text("StudyTime") or None,
            description=header.text("StudyDescription"),
            accession_number=header.text("AccessionNumber"),
            study_id=header.text("StudyID"),
            received_at=received_at,
            last_received_at=received_at,
        )
        self._add(study)
        self._studies[uid] = study
        return study

    def _create_series(
        self, uid: str, study: Study, header: Header, received_at: datetime
    ) -> Series:
        number = header.integer("SeriesNumber")
        description = header.text("SeriesDescription") or header.text("ProtocolName")
        folder = series_folder_name(number, description or header.text("Modality"))
        taken = select(Series.id).where(
            Series.study_pk == study.id, func.lower(Series.folder) == folder.lower()
        )
        if self._session.scalar(taken) is not None:
            folder = with_uid_suffix(folder, uid)
        series = Series(
            completion=Completion.RECEIVING,
            generation=1,
            completion_announced=False,
            conversion=ConversionState.PENDING,
            series_instance_uid=uid,
            study_pk=study.id,
            folder=folder,
            modality=header.text("Modality"),
            series_number=number,
            description=description,
            received_at=received_at,
            last_received_at=received_at,
            expected_instances=self._expected.get(uid),
        )
        self._add(series)
        self._series[uid] = series
        return series

    def _patient(self, header: Header) -> Patient:
        patient_id = header.text("PatientID")
        patient = self._session.scalar(select(Patient).where(Patient.patient_id == patient_id))
        if patient is None:
            patient = Patient(
                patient_id=patient_id,
                patient_name=header.text("PatientName"),
                birth_date=header.text("PatientBirthDate"),
                sex=header.text("PatientSex"),
            )
            self._add(patient)
        return patient

    def _add(self, row: Patient | Study | Series) -> None:
        # Flushed at once: the next collision check must see it, and it needs its key.
        self._session.add(row)
        self._session.flush()


def _dicom_date(value: str) -> str:
    """YYYYMMDD, or "" when absent or malformed (sorts before every date on every backend)."""
    return value if len(value) == 8 and value.isdigit() else ""

"""Studies, series and retrieval jobs written into a catalog as the sorter, the converter
and the retriever leave them, for the tests of the notifier."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.models import Patient, RetrievalJob, Series, Study
from shared.catalog.states import Completion, ConversionState, JobState, StudyRetrievalState
from shared.messages import SeriesConverted, SeriesFailed, SeriesSkipped
from shared.retrievals import new_job

PATIENT_ID = "PAT-4711-X"
PATIENT_NAME = "Lovelace^Augusta^Ada"


@dataclass(frozen=True)
class FiledStudy:
    uid: str
    series: tuple[str, ...]
    lab: str


def file_study(
    sessions: sessionmaker[Session],
    lab: str,
    series: int = 2,
    *,
    description: str = "Research^Brain",
    patient_id: str = PATIENT_ID,
) -> FiledStudy:
    """A study of ``series`` complete series, none converted yet."""
    now = datetime.now(UTC)
    study_uid = generate_uid()
    series_uids = tuple(generate_uid() for _ in range(series))
    with sessions.begin() as session:
        patient = session.scalar(select(Patient).where(Patient.patient_id == patient_id))
        if patient is None:
            patient = Patient(patient_id=patient_id, patient_name=PATIENT_NAME)
            session.add(patient)
        study = Study(
            study_instance_uid=study_uid,
            patient=patient,
            physician_name=lab.replace("_", "^"),
            physician_folder=lab,
            folder=f"20260101_{patient_id}_{study_uid[-6:]}",
            study_date="20260101",
            description=description,
            accession_number="",
            received_at=now,
            last_received_at=now,
        )
        session.add(study)
        for number, uid in enumerate(series_uids, start=1):
            session.add(_series(uid, study, number))
    return FiledStudy(study_uid, series_uids, lab)


def _series(uid: str, study: Study, number: int) -> Series:
    now = datetime.now(UTC)
    return Series(
        series_instance_uid=uid,
        study=study,
        folder=f"{number:03d}_T1w",
        modality="MR",
        series_number=number,
        description=f"T1w {number}",
        received_at=now,
        last_received_at=now,
        completion=Completion.COMPLETE,
        completed_at=now,
        instance_count=10 * number,
    )


def add_series(sessions: sessionmaker[Session], study: FiledStudy) -> FiledStudy:
    """The study with one more complete series, not converted yet."""
    uid = generate_uid()
    with sessions.begin() as session:
        row = session.scalar(select(Study).where(Study.study_instance_uid == study.uid))
        assert row is not None
        session.add(_series(uid, row, len(study.series) + 1))
    return FiledStudy(study.uid, (*study.series, uid), study.lab)


def concluded(
    sessions: sessionmaker[Session],
    study: FiledStudy,
    series_uid: str,
    state: ConversionState,
    reason: str = "",
) -> SeriesConverted | SeriesSkipped | SeriesFailed:
    """The converter's record of a series' outcome, and the event it publishes after."""
    with sessions.begin() as session:
        series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
        assert series is not None
        series.conversion, series.conversion_reason = state, reason
        series.converted_generation = series.generation
        generation = series.generation
    common = {
        "study_instance_uid": study.uid,
        "series_instance_uid": series_uid,
        "generation": generation,
    }
    if state == ConversionState.CONVERTED:
        return SeriesConverted(**common, outputs=("x.nii.gz",), engines=("dcm2niix",))
    if state == ConversionState.SKIPPED:
        return SeriesSkipped(**common, reason=reason or "a localizer")
    return SeriesFailed(**common, reason=reason or "no engine could convert it")


def finished_job(
    sessions: sessionmaker[Session],
    moved: dict[str, StudyRetrievalState],
    state: JobState = JobState.COMPLETED,
) -> int:
    """A retrieval job that moved these studies and ended in ``state``."""
    with sessions.begin() as session:
        job = new_job(
            session,
            origin="request",
            pacs="PACS",
            query={"study_date": "20260101"},
            studies=[(uid, []) for uid in moved],
        )
        job.state, job.finished_at = state, datetime.now(UTC)
        for row in job.studies:
            row.state = moved[row.study_uid]
            row.completed = 10
            row.reason = "" if row.state != StudyRetrievalState.FAILED else "the PACS refused"
        return job.id


def running_job(sessions: sessionmaker[Session], study_uid: str) -> int:
    with sessions.begin() as session:
        job = new_job(session, origin="request", pacs="PACS", query={}, studies=[(study_uid, [])])
        job.state = JobState.RUNNING
        return job.id


def end_job(sessions: sessionmaker[Session], job_id: int, state: JobState) -> None:
    with sessions.begin() as session:
        job = session.get(RetrievalJob, job_id)
        assert job is not None
        job.state, job.finished_at = state, datetime.now(UTC)
        for row in job.studies:
            row.state = StudyRetrievalState.COMPLETED

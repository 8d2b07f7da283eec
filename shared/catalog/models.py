"""The catalog: what dcmdb holds, by patient, study, series and instance.

Paths are stored relative to the archive root, so the archive can move.
Times are UTC. Study dates keep DICOM's ``YYYYMMDD`` text, which sorts and
compares correctly as a string; a missing or malformed date is ``""``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false as sa_false

from shared.catalog.states import (
    AuditAction,
    Completion,
    ConversionState,
    EvictionReason,
    JobState,
    StudyRetrievalState,
)
from shared.catalog.types import StateColumn, UtcDateTime

UID = String
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Patient(Base):
    __tablename__ = "patients"
    # Names match in any case: DICOMweb's PatientName (a whole name, or its start).
    __table_args__ = (Index("ix_patients_patient_name_lower", func.lower(text("patient_name"))),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String, unique=True)  # "" when absent
    patient_name: Mapped[str] = mapped_column(String, default="")
    # As the first instance of the patient said ("" when it did not); None for patients
    # filed before they were recorded (migration 0011): a C-FIND reads those from a file.
    birth_date: Mapped[str | None] = mapped_column(String)  # YYYYMMDD
    sex: Mapped[str | None] = mapped_column(String)

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        UniqueConstraint("physician_folder", "folder", name="uq_studies_folder"),
        # Listings page by (sort key, id), within a lab or over all.
        Index("ix_studies_study_date", "study_date", "id"),
        Index("ix_studies_received_at", "received_at", "id"),
        Index("ix_studies_physician_study_date", "physician_folder", "study_date", "id"),
        Index("ix_studies_physician_received_at", "physician_folder", "received_at", "id"),
        # The API resolves a physician filter from these pairs, read off this index alone.
        Index("ix_studies_physician_names", "physician_folder", "physician_name"),
        # A patient's studies by date, within a lab, listed or not: a DICOMweb search by
        # name sorts its page from this index alone.
        Index(
            "ix_studies_patient_listing",
            "patient_pk",
            "study_date",
            "id",
            "physician_folder",
            "evicting_at",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    physician_name: Mapped[str] = mapped_column(String, default="")
    physician_folder: Mapped[str] = mapped_column(String)
    folder: Mapped[str] = mapped_column(String)
    study_date: Mapped[str] = mapped_column(String, default="")  # YYYYMMDD or ""
    study_time: Mapped[str | None] = mapped_column(String)
    description: Mapped[str] = mapped_column(String, default="")
    accession_number: Mapped[str] = mapped_column(String, default="")
    study_id: Mapped[str | None] = mapped_column(String)  # None: filed before 0011, as above
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Retention never evicts a pinned study.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    # Set when retention starts removing the study: from then on it is gone for every
    # reader (see `LISTED`), and the sorter files nothing into it.
    evicting_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")

    @property
    def relative_folder(self) -> str:
        return f"{self.physician_folder}/{self.folder}"


# The studies a reader may see: every query that shows or serves a study filters on it.
LISTED = Study.evicting_at.is_(None)


def of_labs(labs: frozenset[str] | None) -> list[ColumnElement[bool]]:
    """The conditions of a listed study that these labs see (None: every lab): the one lab
    filter of the API's keys and the DICOM desktops alike."""
    if labs is None:
        return [LISTED]
    return [LISTED, Study.physician_folder.in_(sorted(labs))]


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (
        UniqueConstraint("study_pk", "folder", name="uq_series_folder"),
        Index("ix_series_completion", "completion", "last_received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    folder: Mapped[str] = mapped_column(String)
    modality: Mapped[str] = mapped_column(String, default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String, default="")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Completion: DICOM never says a series is done, so dcmdb decides (see
    # services/sorter/completion.py). A late instance reopens a complete series
    # and starts a new generation, which completes and converts again.
    completion: Mapped[Completion] = mapped_column(
        StateColumn(Completion),
        default=Completion.RECEIVING,
        server_default=Completion.RECEIVING.value,
    )
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    completion_announced: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=sa_false()
    )
    expected_instances: Mapped[int | None] = mapped_column(Integer)  # when the PACS said
    # Counts of the instances filed, kept by the sorter (see `recount_series`) so that
    # listings need not count instances.
    instance_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Conversion to NIfTI of the newest complete generation.
    conversion: Mapped[ConversionState] = mapped_column(
        StateColumn(ConversionState),
        default=ConversionState.PENDING,
        server_default=ConversionState.PENDING.value,
    )
    conversion_reason: Mapped[str] = mapped_column(String, default="", server_default="")
    converted_generation: Mapped[int | None] = mapped_column(Integer)
    # The converter's policy that made the outputs (shared/reconversion.py); an upgrade
    # converts again, once, the series an older policy got wrong.
    conversion_policy: Mapped[int | None] = mapped_column(Integer)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    outputs: Mapped[list[NiftiOutput]] = relationship(
        back_populates="series", cascade="all, delete-orphan"
    )


class NiftiOutput(Base):
    """One NIfTI volume (with its JSON sidecar, and a diffusion volume's gradient table)
    made from a series."""

    __tablename__ = "nifti_outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    path: Mapped[str] = mapped_column(String)  # relative to the archive root
    sidecar_path: Mapped[str] = mapped_column(String)
    bval_path: Mapped[str | None] = mapped_column(String)  # diffusion only
    bvec_path: Mapped[str | None] = mapped_column(String)
    engine: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    series: Mapped[Series] = relationship(back_populates="outputs")

    @property
    def gradient_paths(self) -> list[str]:
        return [p for p in (self.bval_path, self.bvec_path) if p]

    @property
    def paths(self) -> list[str]:
        """Every file of the output, relative to the archive root."""
        return [self.path, self.sidecar_path, *self.gradient_paths]


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String)  # relative to the archive root
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    calling_ae: Mapped[str] = mapped_column(String, default="")
    replacements: Mapped[int] = mapped_column(Integer, default=0)

    series: Mapped[Series] = relationship(back_populates="instances")


class InstanceHistory(Base):
    """A filed copy of an instance that another copy replaced (`shared.overwrite`): kept
    under ``history/`` at ``kept_path`` until its study is evicted."""

    __tablename__ = "instance_history"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "old_sha256", name="uq_instance_history_copy"),
        Index("ix_instance_history_study", "study_instance_uid", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    replaced_at: Mapped[datetime] = mapped_column(UtcDateTime)
    reason: Mapped[str] = mapped_column(String)  # why the new copy replaced it
    kept_path: Mapped[str] = mapped_column(String)  # relative to history/
    old_received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    old_calling_ae: Mapped[str] = mapped_column(String)
    old_size: Mapped[int] = mapped_column(BigInteger)
    old_sha256: Mapped[str] = mapped_column(String)
    new_received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    new_calling_ae: Mapped[str] = mapped_column(String)
    new_size: Mapped[int] = mapped_column(BigInteger)
    new_sha256: Mapped[str] = mapped_column(String)


# Retrievals from the PACS -------------------------------------------------------------------


class RetrievalJob(Base):
    """A C-FIND at study level on a PACS, then a C-MOVE (or C-GET) of each match to dcmdb."""

    __tablename__ = "retrieval_jobs"
    __table_args__ = (
        Index("ix_retrieval_jobs_state", "state", "heartbeat_at"),
        Index("ix_retrieval_jobs_requested_by", "requested_by", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[JobState] = mapped_column(StateColumn(JobState), default=JobState.QUEUED)
    origin: Mapped[str] = mapped_column(String)  # "request", "nightly" or "repair"
    pacs: Mapped[str] = mapped_column(String)  # the peer's name
    query: Mapped[str] = mapped_column(String)  # JSON of the study-level query
    # The nightly slot it runs for ("2026-11-25T01:00"); unique: one run per slot.
    nightly_slot: Mapped[str | None] = mapped_column(String, unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A running job's worker touches it regularly; one gone quiet is taken over.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(String, default="")
    gaps: Mapped[str] = mapped_column(String, default="")  # JSON: what the check found missing
    requested_by: Mapped[str | None] = mapped_column(String)  # the key's name, if any
    # JSON list of the lab folders whose studies it may fetch; NULL: every lab.
    labs: Mapped[str | None] = mapped_column(String)

    studies: Mapped[list[RetrievalStudy]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="RetrievalStudy.id"
    )


class RetrievalStudy(Base):
    """One study a job fetches, and how its move went."""

    __tablename__ = "retrieval_studies"
    __table_args__ = (UniqueConstraint("job_id", "study_uid", name="uq_retrieval_studies_study"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("retrieval_jobs.id"), index=True)
    study_uid: Mapped[str] = mapped_column(UID)
    state: Mapped[StudyRetrievalState] = mapped_column(
        StateColumn(StudyRetrievalState), default=StudyRetrievalState.QUEUED
    )
    series_uids: Mapped[str] = mapped_column(String, default="")  # JSON; only these, if any
    expected_series: Mapped[int | None] = mapped_column(Integer)
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    warning: Mapped[int] = mapped_column(Integer, default=0)
    remaining: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String, default="")

    job: Mapped[RetrievalJob] = relationship(back_populates="studies")


class ExpectedSeries(Base):
    """What the PACS said a series holds, so that it completes once all of it is filed."""

    __tablename__ = "expected_series"

    series_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    expected_instances: Mapped[int] = mapped_column(Integer)


# Retention --------------------------------------------------------------------------------


class Eviction(Base):
    """One study removed by retention (the audit trail), from its start to its end.

    Written when the study is marked ``evicting`` and closed (``evicted_at``) in the
    transaction that deletes its catalog rows; ``announced`` once ``study.evicted`` is
    confirmed published (an outbox, as for series completions).
    """

    __tablename__ = "evictions"
    __table_args__ = (Index("ix_evictions_announced", "announced", "evicted_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    physician_folder: Mapped[str] = mapped_column(String)
    folder: Mapped[str] = mapped_column(String)  # the study folder, relative to the archive
    study_date: Mapped[str] = mapped_column(String, default="")
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    reason: Mapped[EvictionReason] = mapped_column(StateColumn(EvictionReason))
    series_count: Mapped[int] = mapped_column(Integer)
    instance_count: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    evicted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    announced: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())


# Audit ------------------------------------------------------------------------------------


class AuditEvent(Base):
    """One answer of the API that read patient data or changed something: who (the key's
    name, the client's address), what (the action and the study, series or job), when the
    answer ended, its HTTP status and the body bytes sent (services/api/audit.py). Or a
    desktop's C-MOVE or C-GET of a study (services/receiver/retrieve.py): the key name is
    ``desktop:<AE title>``, the status the final DIMSE status, with the instances and bytes
    sent and a C-MOVE's destination.

    Never a patient's name or ID: the UIDs only, and only of an answer that succeeded (a
    UID that failed may be anything a caller typed); never a query parameter.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        # Newest first (by id), within one key, action or study, or over all.
        Index("ix_audit_events_key_name", "key_name", "id"),
        Index("ix_audit_events_action", "action", "id"),
        Index("ix_audit_events_study_uid", "study_uid", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)  # since/until, pruning
    key_name: Mapped[str] = mapped_column(String)
    action: Mapped[AuditAction] = mapped_column(StateColumn(AuditAction))
    study_uid: Mapped[str | None] = mapped_column(UID)
    series_uid: Mapped[str | None] = mapped_column(UID)
    job_id: Mapped[int | None] = mapped_column(Integer)  # no foreign key: outlives its job
    status: Mapped[int] = mapped_column(Integer)
    bytes_sent: Mapped[int] = mapped_column(BigInteger)
    client: Mapped[str | None] = mapped_column(String)  # the peer's address, None if unknown
    instances: Mapped[int | None] = mapped_column(Integer)  # C-MOVE and C-GET only
    destination: Mapped[str | None] = mapped_column(String)  # C-MOVE only

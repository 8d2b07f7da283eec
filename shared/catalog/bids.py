"""The catalog's tables of the labs' BIDS datasets: pseudonyms for subjects and sessions.

A subject is one patient of one lab, known by a digest of the PatientID (never the ID
itself); its label is the lab's next number, kept for good, so a patient's later studies
are later sessions of the same subject. A session is one study; it keeps its label when the
study is evicted, so a study fetched again returns to its place.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from shared.catalog.models import UID, Base
from shared.catalog.types import UtcDateTime


class BidsSubject(Base):
    __tablename__ = "bids_subjects"
    __table_args__ = (
        UniqueConstraint("lab", "patient_key", name="uq_bids_subjects_patient"),
        UniqueConstraint("lab", "label", name="uq_bids_subjects_label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lab: Mapped[str] = mapped_column(String)  # the physician folder
    patient_key: Mapped[str] = mapped_column(String)  # sha256 of the PatientID (see pseudonyms)
    label: Mapped[str] = mapped_column(String)  # "001": sub-001
    # Days added to this subject's acquisition dates where dates are shifted (DCMDB_BIDS_DATES).
    date_shift_days: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    sessions: Mapped[list[BidsSession]] = relationship(back_populates="subject")


class BidsSession(Base):
    __tablename__ = "bids_sessions"
    __table_args__ = (UniqueConstraint("subject_id", "label", name="uq_bids_sessions_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("bids_subjects.id"), index=True)
    label: Mapped[str] = mapped_column(String)  # "01": ses-01
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    subject: Mapped[BidsSubject] = relationship(back_populates="sessions")

"""The catalog's tables of the reconciliation of the scanners with the PACS.

A run is one scanner checked once (nightly, or on demand), with its outcome: a peer that
could not be asked leaves a failed run with the reason, never an empty report. A
difference is one study or series the PACS lacks, open until a later run finds it
resolved; it carries the day the scanner deletes the study.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.catalog.models import Base
from shared.catalog.states import CheckState, DifferenceKind, DifferenceState
from shared.catalog.types import StateColumn, UtcDateTime


class ReconciliationRun(Base):
    """One scanner compared with the PACS."""

    __tablename__ = "reconciliation_runs"
    __table_args__ = (
        # The nightly slot of each scanner runs once, however many retrievers there are.
        UniqueConstraint("scanner", "nightly_slot", name="uq_reconciliation_runs_slot"),
        Index("ix_reconciliation_runs_scanner", "scanner", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scanner: Mapped[str] = mapped_column(String)
    pacs: Mapped[str] = mapped_column(String)
    nightly_slot: Mapped[str | None] = mapped_column(String)  # None: run on demand
    state: Mapped[CheckState] = mapped_column(StateColumn(CheckState))
    reason: Mapped[str] = mapped_column(String, default="")
    first_day: Mapped[date] = mapped_column(Date)
    last_day: Mapped[date] = mapped_column(Date)
    studies: Mapped[int] = mapped_column(Integer, default=0)  # on the scanner, in the window
    missing: Mapped[int] = mapped_column(Integer, default=0)  # differences open after it
    associations: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When a notifier took it to tell the webhooks (once, whichever notifier).
    notified_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Difference(Base):
    """A study, or a series of one, that a scanner holds and the PACS lacks (in part)."""

    __tablename__ = "reconciliation_differences"
    __table_args__ = (
        Index("ix_reconciliation_differences_open", "scanner", "state", "study_uid"),
        Index("ix_reconciliation_differences_lab", "lab", "deadline"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scanner: Mapped[str] = mapped_column(String)
    study_uid: Mapped[str] = mapped_column(String)
    series_uid: Mapped[str] = mapped_column(String, default="")  # "": the whole study
    kind: Mapped[DifferenceKind] = mapped_column(StateColumn(DifferenceKind))
    state: Mapped[DifferenceState] = mapped_column(StateColumn(DifferenceState))
    lab: Mapped[str] = mapped_column(String)  # the study's referring physician's folder
    study_date: Mapped[date] = mapped_column(Date)
    deadline: Mapped[date] = mapped_column(Date)  # the day the scanner deletes the study
    scanner_instances: Mapped[int] = mapped_column(Integer)
    pacs_instances: Mapped[int] = mapped_column(Integer)
    found_at: Mapped[datetime] = mapped_column(UtcDateTime)
    checked_at: Mapped[datetime] = mapped_column(UtcDateTime)  # the last run that saw it
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    resolution: Mapped[str] = mapped_column(String, default="")  # a `Resolution`
    retrieval_job_id: Mapped[int | None] = mapped_column(Integer)  # the rescue's job
    forwarded_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # sent on to the PACS

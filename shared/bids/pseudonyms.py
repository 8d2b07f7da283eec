"""Subject and session labels: pseudonyms from the catalog, never a patient's ID or name.

A subject is a patient of one lab, found again by a digest of the PatientID: a later study of
the same patient is the subject's next session. A study without a PatientID is a subject of
its own (two such studies cannot be told to be one person). Labels are numbers in order of
first arrival, zero-padded so that they sort: sub-001, ses-01.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.catalog.bids import BidsSession, BidsSubject

# Where dates are shifted (DCMDB_BIDS_DATES=shift), each subject's go back by one number of
# days from this range, drawn once: the intervals between its sessions stay true.
SHIFT_DAYS = (365, 3650)
_TRIES = 5  # labels taken by another process meanwhile are drawn again


@dataclass(frozen=True)
class Pseudonym:
    lab: str
    subject: str  # the label, without "sub-"
    session: str  # the label, without "ses-"
    date_shift_days: int  # negative: days added to the subject's dates


def patient_key(patient_id: str, study_uid: str) -> str:
    """What finds a subject again: a digest of the PatientID (of the study, where none)."""
    source = f"patient:{patient_id}" if patient_id.strip() else f"study:{study_uid}"
    return hashlib.sha256(source.encode()).hexdigest()


def existing(session: Session, study_uid: str) -> Pseudonym | None:
    """The labels a study was given, if any."""
    row = session.scalar(select(BidsSession).where(BidsSession.study_instance_uid == study_uid))
    return None if row is None else _pseudonym(row)


def for_study(session: Session, study_uid: str, lab: str, patient_id: str) -> Pseudonym:
    """The study's labels, given now if it has none. Commits: labels are handed out in
    transactions of their own, so that two converters cannot give one label twice (the
    loser of a race draws again)."""
    for _ in range(_TRIES):
        found = existing(session, study_uid)
        if found is not None:
            return found
        try:
            with session.begin_nested():
                subject = _subject(session, lab, patient_key(patient_id, study_uid))
                labels = {s.label for s in subject.sessions}
                row = BidsSession(
                    study_instance_uid=study_uid,
                    subject=subject,
                    label=_next(labels, width=2),
                    created_at=datetime.now(UTC),
                )
                session.add(row)
            session.commit()
            return _pseudonym(row)
        except IntegrityError:
            session.rollback()
    raise RuntimeError(f"no BIDS labels for study {study_uid} after {_TRIES} tries")


def _subject(session: Session, lab: str, key: str) -> BidsSubject:
    subject = session.scalar(
        select(BidsSubject).where(BidsSubject.lab == lab, BidsSubject.patient_key == key)
    )
    if subject is not None:
        return subject
    labels = set(session.scalars(select(BidsSubject.label).where(BidsSubject.lab == lab)))
    subject = BidsSubject(
        lab=lab,
        patient_key=key,
        label=_next(labels, width=3),
        date_shift_days=-(SHIFT_DAYS[0] + secrets.randbelow(SHIFT_DAYS[1] - SHIFT_DAYS[0] + 1)),
        created_at=datetime.now(UTC),
    )
    session.add(subject)
    session.flush()
    return subject


def _next(labels: set[str], width: int) -> str:
    numbers = [int(label) for label in labels if label.isdigit()]
    return f"{max(numbers, default=0) + 1:0{width}d}"


def _pseudonym(row: BidsSession) -> Pseudonym:
    subject = row.subject
    return Pseudonym(subject.lab, subject.label, row.label, subject.date_shift_days)

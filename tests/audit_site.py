"""What the audit tests share: named keys in a real keys file, a study of a patient whose
name and ID must never reach the audit trail, and the trail as the catalog stores it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import keys
from shared.catalog.models import AuditEvent, Series, Study
from tests.filed_studies import Archive

PATIENT_NAME = "AUDITED^PATIENT"
PATIENT_ID = "PID-AUDIT-QX"
READER, OPERATOR = "smith-lab", "operator"
READ_KEY = "dcmdb_audit-read-key-0123456789abcdef"
ADMIN_KEY = "dcmdb_audit-admin-key-0123456789abcdef"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


READ, ADMIN = bearer(READ_KEY), bearer(ADMIN_KEY)


def write_keys(path: Path) -> None:
    """The keys file the API reads: a read key and an admin key, each with its name."""
    with keys.editing(path) as document:
        for name, scope, key in (
            (READER, keys.Scope.READ, READ_KEY),
            (OPERATOR, keys.Scope.ADMIN, ADMIN_KEY),
        ):
            entry = keys.KeyEntry(name=name, scope=scope, labs="all", sha256=keys.digest(key))
            document.keys.append(entry)


def patient_study(archive: Archive) -> tuple[str, str]:
    """A study (and its series' UID) of the patient the trail must never name."""
    study = archive.study(PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    with archive.sessions() as session:
        series = session.scalar(
            select(Series.series_instance_uid)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_instance_uid == study)
        )
    assert series is not None
    return study, series


def stored(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    """The trail's rows as the catalog holds them, oldest first."""
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def assert_no_patient_data(rows: list[AuditEvent]) -> None:
    """No column of any row holds the patient's name or ID, or a part of them."""
    assert rows
    parts = {PATIENT_NAME, PATIENT_ID, *PATIENT_NAME.split("^"), "PID-AUDIT"}
    for row in rows:
        for column in AuditEvent.__table__.columns:
            value = str(getattr(row, column.key))
            assert not any(part in value for part in parts), (column.key, value)

"""What a C-MOVE or C-GET asks for, and the archived instances that answer it.

The identifier names a QueryRetrieveLevel and that level's unique key (PS3.4 C.4.2.2.1):
PatientID at PATIENT level (Patient Root only), StudyInstanceUID at STUDY,
SeriesInstanceUID at SERIES, SOPInstanceUID at IMAGE; the UIDs may be lists. A unique key
of a level above, when given, is one value and narrows the match (a retrieve without them
is served all the same: UIDs are unique). Matched in the catalog, among the studies of the
labs the desktop sees that are not being evicted (`of_labs`): another lab's study is simply
not found.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from services.receiver.outgoing import Outgoing
from shared.catalog.models import Instance, Patient, Series, Study, of_labs

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_BATCH = 500  # UIDs per query: SQLite limits a statement's parameters


class IdentifierRefused(Exception):
    """The identifier asks for nothing dcmdb can retrieve; the message says why."""


@dataclass(frozen=True)
class RetrieveKeys:
    """The unique keys of a retrieve: one value above its level, one or more at it."""

    level: str
    patient_id: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()

    @classmethod
    def of(cls, identifier: Dataset, patient_root: bool) -> RetrieveKeys:
        """IdentifierRefused when the level is missing or not of the model, the level's
        unique key is missing, a key above it names several values or a UID is not one."""
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        levels = LEVELS if patient_root else LEVELS[1:]
        if level not in levels:
            shown = f"{level[:16]!r}" if level else "missing"
            raise IdentifierRefused(f"QueryRetrieveLevel {shown}: not {'/'.join(levels)}")
        values = {
            name: _values(identifier, keyword, uid=name != "PATIENT")
            for name, keyword in UNIQUE_KEYS.items()
        }
        if not values[level]:
            raise IdentifierRefused(f"a {level} retrieve needs {UNIQUE_KEYS[level]}")
        if len(values["PATIENT"]) > 1:
            raise IdentifierRefused("one PatientID: it is no list")
        for above in LEVELS[: LEVELS.index(level)]:
            if len(values[above]) > 1:
                raise IdentifierRefused(f"one {UNIQUE_KEYS[above]} above {level} level")
        return cls(
            level,
            values["PATIENT"][0] if values["PATIENT"] else None,
            values["STUDY"],
            values["SERIES"],
            values["IMAGE"],
        )


@dataclass(frozen=True)
class Retrievable:
    """An archived instance a retrieve sends, with its study and lab."""

    outgoing: Outgoing
    study_uid: str
    lab: str  # the study's physician folder
    size: int


def retrievable(
    session: Session, keys: RetrieveKeys, labs: frozenset[str] | None, archive_root: Path
) -> list[Retrievable]:
    """The instances `keys` name among the listed studies of `labs` (None: every lab), in
    study, series and instance order."""
    found: list[Retrievable] = []
    for statement in _statements(keys, labs):
        for row in session.execute(statement):
            outgoing = Outgoing(
                row.sop_class_uid,
                row.sop_instance_uid,
                row.transfer_syntax_uid,
                archive_root / row.path,
            )
            found.append(
                Retrievable(outgoing, row.study_instance_uid, row.physician_folder, row.size)
            )
    return found


def _statements(
    keys: RetrieveKeys, labs: frozenset[str] | None
) -> Iterator[Select[str, str, str, str, int, str, str]]:
    statement = (
        select(
            Instance.sop_class_uid,
            Instance.sop_instance_uid,
            Instance.transfer_syntax_uid,
            Instance.path,
            Instance.size,
            Study.study_instance_uid,
            Study.physician_folder,
        )
        .join(Series, Series.id == Instance.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(*of_labs(labs))
        .order_by(Study.id, Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    if keys.patient_id is not None:
        statement = statement.join(Patient, Patient.id == Study.patient_pk).where(
            Patient.patient_id == keys.patient_id
        )
    # One value above the retrieve's level; one or more at it, in batches.
    columns = {
        "STUDY": (Study.study_instance_uid, keys.study_uids),
        "SERIES": (Series.series_instance_uid, keys.series_uids),
        "IMAGE": (Instance.sop_instance_uid, keys.sop_uids),
    }
    listed = None
    for level, (column, uids) in columns.items():
        if level == keys.level:
            listed = (column, uids)
        elif uids:
            statement = statement.where(column == uids[0])
    if listed is None:  # a PATIENT retrieve: the patient's every listed study
        yield statement
        return
    column, uids = listed
    for start in range(0, len(uids), _BATCH):
        yield statement.where(column.in_(uids[start : start + _BATCH]))


def _values(identifier: Dataset, keyword: str, *, uid: bool) -> tuple[str, ...]:
    """A key's values, each once; a UID key's all UIDs."""
    value = identifier.get(keyword)
    if value is None:
        return ()
    raw = list(value) if isinstance(value, MultiValue) else str(value).split("\\")
    values = tuple(dict.fromkeys(text for v in raw if (text := str(v).strip(" \0"))))
    for text in values:
        if uid and (len(text) > 64 or not _UID.match(text)):
            raise IdentifierRefused(f"{keyword} {text[:20]!r} is not a UID")
    return values

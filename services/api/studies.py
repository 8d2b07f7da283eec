"""The catalog as the API shows it: study listings, study and series details, physicians.

Listings page by keyset: rows are ordered by (sort key, id) and a page starts after the
last (key, id) of the page before, so the deepest page costs what the first does and a
study filed meanwhile neither shifts nor repeats the pages.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, tuple_
from sqlalchemy.orm import Session, selectinload, sessionmaker

from services.api.parameters import LIKE_ESCAPE, Cursor, DateRange
from services.api.schemas import (
    ConversionSummary,
    Nifti,
    NiftiFile,
    Physician,
    ReplacedCopy,
    SeriesSummary,
    StudyDetail,
    StudySummary,
)
from shared.catalog.models import Instance, InstanceHistory, Patient, Series, Study, of_labs
from shared.catalog.states import ConversionState
from shared.naming import physician_folder

SORT_KEYS = {"received": Study.received_at, "study_date": Study.study_date}


@dataclass(frozen=True)
class StudyFilters:
    labs: frozenset[str] | None  # what the caller sees: `shared.keys.Caller.labs`
    physician_folders: frozenset[str] | None = None  # resolved by `PhysicianDirectory`
    patient_id: str | None = None
    patient_name: str | None = None  # a LIKE pattern
    study_date: DateRange | None = None
    modality: str | None = None
    accession_number: str | None = None
    description: str | None = None  # a LIKE pattern
    received_since: dt.datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        where = of_labs(self.labs)
        if self.physician_folders is not None:
            where.append(Study.physician_folder.in_(sorted(self.physician_folders)))
        if self.patient_id is not None:
            where.append(Patient.patient_id == self.patient_id)
        if self.patient_name is not None:
            where.append(
                func.lower(Patient.patient_name).like(self.patient_name.lower(), escape=LIKE_ESCAPE)
            )
        if self.study_date is not None:
            if self.study_date.first:
                where.append(Study.study_date >= self.study_date.first)
            if self.study_date.last:
                where.append(Study.study_date <= self.study_date.last)
            where.append(Study.study_date != "")
        if self.modality is not None:
            where.append(
                exists().where(Series.study_pk == Study.id, Series.modality == self.modality)
            )
        if self.accession_number is not None:
            where.append(Study.accession_number == self.accession_number)
        if self.description is not None:
            where.append(
                func.lower(Study.description).like(self.description.lower(), escape=LIKE_ESCAPE)
            )
        if self.received_since is not None:
            where.append(Study.received_at >= self.received_since)
        return where


_SUMMARY_COLUMNS = (
    Study.id,
    Study.study_instance_uid,
    Study.physician_name,
    Study.physician_folder,
    Study.folder,
    Study.study_date,
    Study.study_time,
    Study.description,
    Study.accession_number,
    Study.received_at,
    Study.pinned,
    Patient.patient_id,
    Patient.patient_name,
)


def list_studies(
    session: Session,
    filters: StudyFilters,
    *,
    sort: str,
    order: str,
    limit: int,
    cursor: Cursor | None,
) -> tuple[list[StudySummary], str | None]:
    """One page of studies and the cursor of the next page (None on the last)."""
    key = SORT_KEYS[sort]
    descending = order == "desc"
    statement = (
        select(*_SUMMARY_COLUMNS)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(*filters.conditions())
    )
    if cursor is not None:
        after = tuple_(key, Study.id)
        position = tuple_(_cursor_key(sort, cursor.key), cursor.id)
        statement = statement.where(after < position if descending else after > position)
    if descending:
        statement = statement.order_by(key.desc(), Study.id.desc())
    else:
        statement = statement.order_by(key.asc(), Study.id.asc())
    rows = session.execute(statement.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    summaries = _summaries(session, rows)
    next_cursor = None
    if more:
        last = rows[-1]
        value = last.received_at if sort == "received" else last.study_date
        next_cursor = Cursor(sort, order, _cursor_text(value), last.id).encode()
    return summaries, next_cursor


def _cursor_text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def _cursor_key(sort: str, text: str) -> Any:
    if sort == "received":
        try:
            return dt.datetime.fromisoformat(text)  # a naive one is UTC, as the column says
        except ValueError:
            raise ValueError(
                "not a cursor from this API: pass the 'next' value of a page"
            ) from None
    return text


def _summaries(session: Session, rows: Sequence[Any]) -> list[StudySummary]:
    """The page's studies with their series counted: one query for all of them."""
    totals: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"series": 0, "instances": 0, "size": 0, "modalities": set(), "states": {}}
    )
    if rows:
        series = session.execute(
            select(
                Series.study_pk,
                Series.modality,
                Series.conversion,
                Series.instance_count,
                Series.size_bytes,
            ).where(Series.study_pk.in_([row.id for row in rows]))
        )
        for study_pk, modality, conversion, instances, size in series:
            total = totals[study_pk]
            total["series"] += 1
            total["instances"] += instances
            total["size"] += size
            if modality:
                total["modalities"].add(modality)
            total["states"][conversion] = total["states"].get(conversion, 0) + 1
    return [_summary(row, totals[row.id]) for row in rows]


def _summary(row: Any, total: dict[str, Any]) -> StudySummary:
    states = total["states"]
    return StudySummary(
        study_uid=row.study_instance_uid,
        physician_name=row.physician_name,
        physician_folder=row.physician_folder,
        folder=f"{row.physician_folder}/{row.folder}",
        patient_id=row.patient_id,
        patient_name=row.patient_name,
        study_date=row.study_date or None,
        study_time=row.study_time or None,
        description=row.description,
        accession_number=row.accession_number,
        modalities=sorted(total["modalities"]),
        series_count=total["series"],
        instance_count=total["instances"],
        size_bytes=total["size"],
        received_at=row.received_at,
        pinned=row.pinned,
        conversion=ConversionSummary(**{s.value: states.get(s, 0) for s in ConversionState}),
    )


def study_detail(
    session: Session, study_uid: str, labs: frozenset[str] | None
) -> StudyDetail | None:
    """The study with its series; None when it is not listed or of a lab not in `labs`."""
    row = session.execute(
        select(*_SUMMARY_COLUMNS)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Study.study_instance_uid == study_uid, *of_labs(labs))
    ).first()
    if row is None:
        return None
    summary = _summaries(session, [row])[0]
    series = session.scalars(
        select(Series)
        .where(Series.study_pk == row.id)
        .options(selectinload(Series.outputs))
        .order_by(Series.series_number, Series.folder)
    ).all()
    folder = summary.folder
    return StudyDetail(
        **summary.model_dump(),
        series=[_series_summary(s, study_uid, folder) for s in series],
        replaced=_replaced(session, study_uid),
    )


def _replaced(session: Session, study_uid: str) -> list[ReplacedCopy]:
    rows = session.scalars(
        select(InstanceHistory)
        .where(InstanceHistory.study_instance_uid == study_uid)
        .order_by(InstanceHistory.id)
    )
    return [
        ReplacedCopy(
            sop_instance_uid=row.sop_instance_uid,
            replaced_at=row.replaced_at,
            reason=row.reason,
            kept_path=row.kept_path,
            old_received_at=row.old_received_at,
            old_calling_ae=row.old_calling_ae,
            old_size_bytes=row.old_size,
            new_received_at=row.new_received_at,
            new_calling_ae=row.new_calling_ae,
            new_size_bytes=row.new_size,
        )
        for row in rows
    ]


def find_study(session: Session, study_uid: str, labs: frozenset[str] | None) -> Study | None:
    """A listed study of one of `labs`."""
    return session.scalar(
        select(Study).where(Study.study_instance_uid == study_uid, *of_labs(labs))
    )


def find_series(
    session: Session, series_uid: str, labs: frozenset[str] | None
) -> tuple[Series, Study] | None:
    """A series of a listed study of one of `labs`, with its study."""
    found = session.execute(
        select(Series, Study)
        .join(Study, Study.id == Series.study_pk)
        .where(Series.series_instance_uid == series_uid, *of_labs(labs))
        .options(selectinload(Series.outputs))
    ).first()
    return None if found is None else (found[0], found[1])


def series_summary(series: Series, study: Study) -> SeriesSummary:
    return _series_summary(series, study.study_instance_uid, study.relative_folder)


def _series_summary(series: Series, study_uid: str, study_folder: str) -> SeriesSummary:
    return SeriesSummary(
        series_uid=series.series_instance_uid,
        study_uid=study_uid,
        number=series.series_number,
        description=series.description,
        modality=series.modality,
        instance_count=series.instance_count,
        size_bytes=series.size_bytes,
        folder=f"{study_folder}/{series.folder}",
        completion=series.completion,
        received_at=series.received_at,
        last_received_at=series.last_received_at,
        nifti=Nifti(
            status=series.conversion,
            reason=series.conversion_reason,
            outputs=[
                NiftiFile(
                    path=o.path,
                    sidecar_path=o.sidecar_path,
                    bval_path=o.bval_path,
                    bvec_path=o.bvec_path,
                    engine=o.engine,
                    size_bytes=o.size,
                )
                for o in sorted(series.outputs, key=lambda o: o.path)
            ],
        ),
    )


class PhysicianDirectory:
    """Which lab folders a `physician` filter means: the folder name or the name as sent,
    either in any case.

    The (folder, name) pairs are few and change rarely; they are cached for a few seconds
    (and looked up again at once, at most every half second, when a value matches none),
    so that a filter resolves without scanning the studies.
    """

    def __init__(self, sessions: sessionmaker[Session], ttl: float = 5.0) -> None:
        self._sessions = sessions
        self._ttl = ttl
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._by_key: dict[str, frozenset[str]] = {}

    def folders_for(self, value: str) -> frozenset[str]:
        key = value.strip().lower()
        if self._stale(key):
            with self._lock:
                if self._stale(key):  # not reloaded meanwhile by another request
                    self._load()
        found = self._by_key.get(key)
        if found is None:  # a raw name typed differently, e.g. "Smith^John" for SMITH_JOHN
            found = self._by_key.get(physician_folder(value).lower(), frozenset())
        return found

    def _stale(self, key: str) -> bool:
        age = time.monotonic() - self._loaded_at
        return age > self._ttl or (key not in self._by_key and age > 0.5)

    def _load(self) -> None:
        with self._sessions() as session:
            pairs = session.execute(
                select(Study.physician_folder, Study.physician_name).distinct()
            ).all()
            by_key: dict[str, set[str]] = defaultdict(set)
            for folder, name in pairs:
                by_key[folder.lower()].add(folder)
                if name:
                    by_key[name.strip().lower()].add(folder)
            self._by_key = {key: frozenset(folders) for key, folders in by_key.items()}
            self._loaded_at = time.monotonic()


def physicians(session: Session, labs: frozenset[str] | None) -> list[Physician]:
    """The lab folders of `labs` that hold studies, with their counts and names."""
    visible = of_labs(labs)
    studies = session.execute(
        select(
            Study.physician_folder,
            func.count(Study.id),
            func.max(func.nullif(Study.study_date, "")),
        )
        .where(*visible)
        .group_by(Study.physician_folder)
    ).all()
    sizes = dict(
        session.execute(
            select(Study.physician_folder, func.coalesce(func.sum(Series.size_bytes), 0))
            .join(Series, Series.study_pk == Study.id)
            .where(*visible)
            .group_by(Study.physician_folder)
        ).all()
    )
    names: dict[str, set[str]] = defaultdict(set)
    for folder, name in session.execute(
        select(Study.physician_folder, Study.physician_name).where(*visible).distinct()
    ):
        if name:
            names[folder].add(name)
    return [
        Physician(
            folder=folder,
            names=sorted(names[folder]),
            study_count=count,
            size_bytes=int(sizes.get(folder, 0)),
            latest_study_date=latest or None,
        )
        for folder, count, latest in sorted(studies)
    ]


def instance_paths(session: Session, series_pks: Iterable[int]) -> list[str]:
    """The archive paths (relative) of the instances of these series, in a stable order."""
    return list(
        session.scalars(
            select(Instance.path)
            .where(Instance.series_pk.in_(list(series_pks)))
            .order_by(Instance.path)
        )
    )

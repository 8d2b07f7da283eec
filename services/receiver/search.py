"""The catalog's answers to a C-FIND query (`levels.Query`), streamed page by page.

Each page of matches is read in a session of its own and the session is closed before the
page is answered: a desktop that reads slowly holds no transaction open (on SQLite that
would keep the sorter's WAL from being checkpointed), and 10,000 matches are never in
memory at once. Pages follow the entity's primary key (keyset), so a row filed meanwhile
neither shifts nor repeats a page. The matching is in SQL where the catalog has the column;
what only a header holds is read from the archived file (its header only) after the page.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import Select, distinct, exists, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from services.receiver.identifier import IdentifierWriter
from services.receiver.levels import (
    CATALOG_KEYS,
    RECORDED_SINCE_0011,
    Level,
    Query,
    Source,
)
from shared.catalog.models import Instance, Patient, Series, Study, of_labs

log = logging.getLogger(__name__)

PAGE_SIZE = 500
# QueryRetrieveLevel, RetrieveAETitle, InstanceAvailability: in every answer.
_ALWAYS = ((0x00080052, "CS"), (0x00080054, "AE"), (0x00080056, "CS"))
_ENTITY: dict[Level, Any] = {
    Level.PATIENT: Patient,
    Level.STUDY: Study,
    Level.SERIES: Series,
    Level.IMAGE: Instance,
}


class CatalogSearch:
    def __init__(self, sessions: sessionmaker[Session], archive_root: Path, ae_title: str):
        self._sessions = sessions
        self._archive = archive_root
        self._ae_title = ae_title
        bind = sessions.kw["bind"]
        self._dialect = str(bind.dialect.name)

    def answers(
        self, query: Query, labs: frozenset[str] | None, *, explicit: bool
    ) -> Iterator[bytes]:
        """The response identifier of each match, in catalog order, encoded in explicit or
        implicit VR little endian."""
        statement = _statement(query, labs, self._dialect)
        writer = IdentifierWriter(
            [*_ALWAYS, *((key.tag, key.vr) for key in query.asked)], explicit=explicit
        )
        pk = _ENTITY[query.level].id
        after = 0
        while True:
            with self._sessions() as session:
                rows = [
                    dict(row._mapping)
                    for row in session.execute(
                        statement.where(pk > after).order_by(pk).limit(PAGE_SIZE)
                    )
                ]
                if not rows:
                    return
                _add_counts(session, query, labs, rows)
                paths = _header_paths(session, query, rows)
            for row in rows:
                answer = self._answer(query, row, paths.get(row["pk"]), writer)
                if answer is not None:
                    yield answer
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1]["pk"]

    def _answer(
        self, query: Query, row: dict[str, Any], path: str | None, writer: IdentifierWriter
    ) -> bytes | None:
        header = self._header(path) if path is not None else None
        if header is None:
            if query.header:
                return None  # nothing to match on: gone since the page was read
        elif not all(match.accepts(_texts(header, match.keyword)) for match in query.header):
            return None
        # A value not recorded (filed before 0011) passed SQL's test: the header says.
        unrecorded = (m for k, m in query.catalog if k in RECORDED_SINCE_0011 and row[k] is None)
        if any(header is None or not m.accepts(_texts(header, m.keyword)) for m in unrecorded):
            return None
        if header is not None:
            for keyword in RECORDED_SINCE_0011:
                if keyword in row and row[keyword] is None:
                    row[keyword] = str(header.get(keyword, "") or "")
        return self._identifier(query, row, header, writer)

    def _identifier(
        self, query: Query, row: dict[str, Any], header: Dataset | None, writer: IdentifierWriter
    ) -> bytes:
        values: list[Any] = [query.level.name, self._ae_title, "ONLINE"]
        for key in query.asked:
            if key.source is Source.HEADER:
                found = header.get(key.tag) if header is not None else None
                values.append(found.value if found is not None else None)
            else:
                values.append(row.get(key.keyword))
        return writer.encode(values, charset_asked=query.asks_character_set)

    def _header(self, path: str) -> Dataset | None:
        try:
            return dcmread(self._archive / path, stop_before_pixels=True)
        except (OSError, ValueError) as exc:  # gone, or not DICOM after all
            log.warning("cannot read the header of %s: %s", path, exc)
            return None


def _statement(query: Query, labs: frozenset[str] | None, dialect: str) -> Select[Any]:
    level = query.level
    entity = _ENTITY[level]
    columns = [entity.id.label("pk")]
    for keyword in {key.keyword for key in query.asked if key.source is Source.CATALOG} | {
        keyword for keyword, _ in query.catalog if keyword in RECORDED_SINCE_0011
    }:
        columns.append(CATALOG_KEYS[keyword].column.label(keyword))
    if level == Level.SERIES and query.asks("NumberOfSeriesRelatedInstances"):
        columns.append(Series.instance_count.label("NumberOfSeriesRelatedInstances"))
    statement = select(*columns)
    if level == Level.PATIENT:
        visible = select(Study.id).where(Study.patient_pk == Patient.id, *of_labs(labs))
        statement = statement.where(exists(visible))
    else:
        if level == Level.IMAGE:
            statement = statement.join(Series, Series.id == Instance.series_pk)
        if level >= Level.SERIES:
            statement = statement.join(Study, Study.id == Series.study_pk)
        statement = statement.join(Patient, Patient.id == Study.patient_pk).where(*of_labs(labs))
    patients = []
    for keyword, match in query.catalog:
        key = CATALOG_KEYS[keyword]
        condition = match.sql(key.column, dialect)
        if keyword in RECORDED_SINCE_0011:  # NULL: not recorded, matched on a header
            condition = or_(condition, key.column.is_(None))
        if key.level == Level.PATIENT and level > Level.PATIENT:
            patients.append(condition)
        else:
            statement = statement.where(condition)
    if patients:
        # The few patients first, then their studies by index: not every study's patient
        # tested in the order of the studies' keys.
        statement = statement.where(Study.patient_pk.in_(select(Patient.id).where(*patients)))
    if query.study_moment is not None:
        statement = statement.where(query.study_moment.sql(Study.study_date, Study.study_time))
    if query.modalities is not None:
        statement = statement.where(
            exists(
                select(Series.id).where(
                    Series.study_pk == Study.id, query.modalities.sql(Series.modality, dialect)
                )
            )
        )
    return statement


def _add_counts(
    session: Session, query: Query, labs: frozenset[str] | None, rows: list[dict[str, Any]]
) -> None:
    ids = [row["pk"] for row in rows]
    if query.level == Level.STUDY and (
        query.asks("NumberOfStudyRelatedSeries")
        or query.asks("NumberOfStudyRelatedInstances")
        or query.asks("ModalitiesInStudy")
    ):
        series: dict[int, int] = defaultdict(int)
        instances: dict[int, int] = defaultdict(int)
        modalities: dict[int, list[str]] = defaultdict(list)
        for study_pk, modality, count, total in session.execute(
            select(Series.study_pk, Series.modality, func.count(), func.sum(Series.instance_count))
            .where(Series.study_pk.in_(ids))
            .group_by(Series.study_pk, Series.modality)
        ):
            series[study_pk] += count
            instances[study_pk] += total or 0
            if modality:
                modalities[study_pk].append(modality)
        for row in rows:
            row["NumberOfStudyRelatedSeries"] = series[row["pk"]]
            row["NumberOfStudyRelatedInstances"] = instances[row["pk"]]
            row["ModalitiesInStudy"] = sorted(modalities[row["pk"]]) or None
    elif query.level == Level.PATIENT and any(
        query.asks(k)
        for k in (
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedSeries",
            "NumberOfPatientRelatedInstances",
        )
    ):
        counts = {
            patient_pk: (studies, series_count, total or 0)
            for patient_pk, studies, series_count, total in session.execute(
                select(
                    Study.patient_pk,
                    func.count(distinct(Study.id)),
                    func.count(Series.id),
                    func.sum(Series.instance_count),
                )
                .outerjoin(Series, Series.study_pk == Study.id)
                .where(Study.patient_pk.in_(ids), *of_labs(labs))
                .group_by(Study.patient_pk)
            )
        }
        for row in rows:
            studies, series_count, total = counts.get(row["pk"], (0, 0, 0))
            row["NumberOfPatientRelatedStudies"] = studies
            row["NumberOfPatientRelatedSeries"] = series_count
            row["NumberOfPatientRelatedInstances"] = total


def _header_paths(session: Session, query: Query, rows: list[dict[str, Any]]) -> dict[int, str]:
    """The file whose header answers for each row that needs one: the instance's own at
    IMAGE level, one of the series' at SERIES level, one of the study's (or patient's) for
    what the catalog did not record before 0011."""
    if query.reads_headers and query.level >= Level.SERIES:
        ids = [row["pk"] for row in rows]
    else:
        legacy = [k for k in RECORDED_SINCE_0011 if k in rows[0]]
        ids = [row["pk"] for row in rows if any(row[k] is None for k in legacy)]
    if not ids:
        return {}
    statement: Select[int, str]
    if query.level == Level.IMAGE:
        statement = select(Instance.id, Instance.path).where(Instance.id.in_(ids))
    elif query.level == Level.SERIES:
        statement = (
            select(Instance.series_pk, func.min(Instance.path))
            .where(Instance.series_pk.in_(ids))
            .group_by(Instance.series_pk)
        )
    else:
        owner = Series.study_pk if query.level == Level.STUDY else Study.patient_pk
        statement = (
            select(owner, func.min(Instance.path))
            .select_from(Instance)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .where(owner.in_(ids))
            .group_by(owner)
        )
    return {pk: path for pk, path in session.execute(statement)}


def _texts(header: Dataset, keyword: str) -> Sequence[str]:
    value = header.get(keyword)
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v) for v in value]
    return [str(value)]

"""A QIDO-RS search run on the catalog, and its results in DICOM JSON.

One query finds a page of studies, series or instances (newest study first, then by series
and instance number) within the caller's labs (`studies.of_labs`); a second counts the series,
instances and modalities of the page's studies. Person names match in any case (as PS3.4
C.2.2.2.1 allows, and as the REST API's patient_name does); other text in its own case,
unless ``fuzzymatching=true``, which makes every text match ignore case and lets a name match
the start of any of its components (``fuzzymatching=true&PatientName=john`` finds
DOE^JOHN). Attributes the catalog does not hold are read from one file of each result.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, aliased

from services.api.dependencies import archive_file
from services.api.dicomweb.dicom_json import element, elements_json
from services.api.dicomweb.search import ATTRIBUTES, Level, Match, Matching, Search
from services.api.parameters import LIKE_ESCAPE, like_pattern
from services.api.settings import ApiSettings
from services.api.studies import of_labs
from shared.catalog.models import Instance, Patient, Series, Study

log = logging.getLogger("dcmdb.api")

_COLUMNS: dict[str, Any] = {
    "StudyInstanceUID": Study.study_instance_uid,
    "PatientName": Patient.patient_name,
    "PatientID": Patient.patient_id,
    "StudyDate": Study.study_date,
    "StudyTime": Study.study_time,
    "AccessionNumber": Study.accession_number,
    "StudyDescription": Study.description,
    "ReferringPhysicianName": Study.physician_name,
    "SeriesInstanceUID": Series.series_instance_uid,
    "Modality": Series.modality,
    "SeriesNumber": Series.series_number,
    "SeriesDescription": Series.description,
    "NumberOfSeriesRelatedInstances": Series.instance_count,
    "SOPInstanceUID": Instance.sop_instance_uid,
    "SOPClassUID": Instance.sop_class_uid,
    "InstanceNumber": Instance.instance_number,
    "AvailableTransferSyntaxUID": Instance.transfer_syntax_uid,
    "PatientBirthDate": Patient.birth_date,
    "PatientSex": Patient.sex,
    "StudyID": Study.study_id,
}
# Recorded by the sorter since migration 0011: NULL for what was filed before, read from a
# file of the study instead.
_RECORDED_SINCE_0011 = ("PatientBirthDate", "PatientSex", "StudyID")
_STUDY_COUNTS = ("ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_RETRIEVE_URL, _AVAILABILITY = "00081190", "00080056"


def run_search(
    session: Session, settings: ApiSettings, search: Search, labs: frozenset[str] | None,
    base: str,
) -> tuple[list[dict[str, Any]], bool]:  # fmt: skip
    """The page of results in DICOM JSON, and whether more results follow it."""
    keywords = search.catalog_keywords()
    # Core statements on the session's connection: the ORM has no objects to make of them.
    connection = session.connection()
    rows = connection.execute(_statement(search, labs, keywords)).all()
    more = len(rows) > search.limit
    rows = rows[: search.limit]
    counts = _study_counts(connection, [row.study_pk for row in rows], keywords)
    shown = [(k, ATTRIBUTES[k].tag, ATTRIBUTES[k].vr) for k in keywords]
    results = [_result(row, shown, counts, base) for row in rows]
    unrecorded = [k for k in _RECORDED_SINCE_0011 if k in keywords]
    reads = [
        (result, row, [*search.from_files, *(k for k in unrecorded if row._mapping[k] is None)])
        for result, row in zip(results, rows, strict=True)
    ]
    if reads := [(result, row, wanted) for result, row, wanted in reads if wanted]:
        paths = _files(session, search.level, [row for _, row, _ in reads])
        for result, row, wanted in reads:
            found = _read(settings, paths.get(_key(search.level, row)), wanted)
            # The catalog's values first; a file's where the catalog has none.
            result.update(
                {t: v for t, v in found.items() if t not in result or "Value" not in result[t]}
            )
    return [dict(sorted(result.items())) for result in results], more


def _statement(search: Search, labs: frozenset[str] | None, keywords: list[str]) -> Select[Any]:
    """The page's rows: first the ids of the page, found and sorted on indexes alone (the
    catalog's (patient, date, id) index covers a name search), then their columns. Studies
    come newest first (by study date), then their series and instances by number."""
    level = search.level
    own_id = {Level.STUDY: Study.id, Level.SERIES: Series.id, Level.INSTANCE: Instance.id}[level]
    order: list[Any] = [Study.study_date.desc(), Study.id.desc()]
    ids: list[Any] = [Study.id.label("study_pk")]
    if level >= Level.SERIES:
        order += [Series.series_number, Series.id]
        ids.append(Series.id.label("series_pk"))
    if level is Level.INSTANCE:
        order += [Instance.instance_number, Instance.id]
        ids += [Instance.id.label("instance_pk"), Instance.path.label("path")]
    if level > Level.STUDY and search.within is None:
        # Series or instances of every study: the newest first, found by walking their own
        # table back from its end, where sorting millions of rows by study would not do.
        order = [own_id.desc()]
    where = [*of_labs(labs), *(_condition(m, search.fuzzy) for m in search.matches)]
    page = (
        _joined(select(own_id.label("id")), level)
        .where(*where)
        .order_by(*order)
        .limit(search.limit + 1)
        .offset(search.offset)
        .subquery("page")
    )
    columns = [_COLUMNS[k].label(k) for k in keywords if k in _COLUMNS]
    return _joined(select(*ids, *columns), level).join(page, page.c.id == own_id).order_by(*order)


def _joined(statement: Select[Any], level: Level) -> Select[Any]:
    """`statement` over the study, its patient and the series and instances of `level`."""
    statement = statement.select_from(Study).join(Patient, Patient.id == Study.patient_pk)
    if level >= Level.SERIES:
        statement = statement.join(Series, Series.study_pk == Study.id)
    if level is Level.INSTANCE:
        statement = statement.join(Instance, Instance.series_pk == Series.id)
    return statement


def _condition(match: Match, fuzzy: bool) -> ColumnElement[bool]:
    kind, keyword = match.attribute.matching, match.attribute.keyword
    if keyword == "ModalitiesInStudy":
        other = aliased(Series)
        return exists().where(other.study_pk == Study.id, other.modality.in_(match.values))
    column = _COLUMNS[keyword]
    if kind in (Matching.UID, Matching.CODE):
        return column.in_(match.values)  # type: ignore[no-any-return]
    if kind is Matching.NUMBER:
        return column == match.number  # type: ignore[no-any-return]
    if kind is Matching.DATE:
        assert match.dates is not None
        first, last = match.dates.first, match.dates.last
        return column.between(first or "00000000", last or "99999999")  # type: ignore[no-any-return]
    value = match.values[0]
    if kind is Matching.PERSON_NAME or fuzzy:
        column, value = func.lower(column), value.lower()
    pattern = like_pattern(value, wildcards=True).replace("?", "_")
    if kind is Matching.PERSON_NAME and fuzzy:  # the start of any component
        return or_(
            column.like(f"{pattern}%", escape=LIKE_ESCAPE),
            column.like(f"%^{pattern}%", escape=LIKE_ESCAPE),
        )
    if not match.has_wildcards:
        return column == value  # type: ignore[no-any-return]
    like = column.like(pattern, escape=LIKE_ESCAPE)
    prefix = re.split(r"[*?]", value, maxsplit=1)[0]
    if not prefix:
        return like  # type: ignore[no-any-return]
    # What starts with the prefix sorts from it to the string after it: an index finds the
    # range (LIKE with a function of the column uses none), LIKE keeps what matches.
    after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return and_(column >= prefix, column < after, like)


@dataclass
class _Counts:
    series: int = 0
    instances: int = 0
    modalities: list[str] = field(default_factory=list)


def _study_counts(
    connection: Connection, study_pks: Sequence[int], keywords: list[str]
) -> dict[int, _Counts]:
    """Series, instances and modalities of each study, counted by the database."""
    pks = sorted(set(study_pks))
    counts = {pk: _Counts() for pk in pks}
    if not pks or not set(_STUDY_COUNTS) & set(keywords):
        return counts
    for pk, modality, series, instances in connection.execute(
        select(Series.study_pk, Series.modality, func.count(), func.sum(Series.instance_count))
        .where(Series.study_pk.in_(pks))
        .group_by(Series.study_pk, Series.modality)
    ):
        count = counts[pk]
        count.series += series
        count.instances += int(instances or 0)
        if modality:
            count.modalities.append(modality)
    return counts


def _result(
    row: Any, shown: list[tuple[str, str, str]], counts: dict[int, _Counts], base: str
) -> dict[str, Any]:
    """One result: each (keyword, tag, VR) of `shown`, its RetrieveURL and availability."""
    values = row._mapping
    count = counts[row.study_pk]
    computed: dict[str, list[Any]] = {
        "ModalitiesInStudy": sorted(count.modalities),
        "NumberOfStudyRelatedSeries": [count.series],
        "NumberOfStudyRelatedInstances": [count.instances],
    }
    result = {
        tag: element(vr, computed[keyword] if keyword in computed else (values[keyword],))
        for keyword, tag, vr in shown
    }
    url = f"{base}/studies/{values['StudyInstanceUID']}"
    if "series_pk" in values:
        url += f"/series/{values['SeriesInstanceUID']}"
    if "instance_pk" in values:
        url += f"/instances/{values['SOPInstanceUID']}"
    result[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
    result[_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    return result


def _key(level: Level, row: Any) -> int:
    """The catalog id of a result's study, series or instance."""
    return int(getattr(row, {1: "study_pk", 2: "series_pk", 3: "instance_pk"}[level]))


def _files(session: Session, level: Level, rows: Sequence[Any]) -> dict[int, str]:
    """A file of each result, to read what the catalog does not hold: the instance's own, or
    the first of its series or study."""
    if level is Level.INSTANCE:
        return {row.instance_pk: row.path for row in rows}
    owner = Series.study_pk if level is Level.STUDY else Instance.series_pk
    statement = (
        select(owner, func.min(Instance.path))
        .join(Series, Series.id == Instance.series_pk)
        .where(owner.in_(sorted({_key(level, row) for row in rows})))
        .group_by(owner)
    )
    return {key: path for key, path in session.execute(statement)}


def _read(settings: ApiSettings, path: str | None, keywords: Sequence[str]) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        ds = dcmread(
            archive_file(settings, path), stop_before_pixels=True, specific_tags=list(keywords)
        )
    except (OSError, InvalidDicomError) as exc:
        log.warning(
            "dicomweb: a file of a search result could not be read (%s)", type(exc).__name__
        )
        return {}
    return elements_json(ds, keywords=keywords)

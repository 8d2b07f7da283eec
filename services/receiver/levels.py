"""The query/retrieve information models and levels, and what a C-FIND identifier asks.

Study Root answers at STUDY, SERIES and IMAGE level; Patient Root at PATIENT level too.
A query is hierarchical (PS3.4 C.4.1.2.1): it names a single value for the unique key of
every level above its own (Patient Root: PatientID; both: StudyInstanceUID above SERIES,
SeriesInstanceUID above IMAGE), or it is refused with 0xA900 and the reason.

Where each key's value comes from (`Source`):

- the catalog, matched in SQL: the columns of `CATALOG_KEYS`, at their level and below
  (a series answer may carry its study's date); `RECORDED_SINCE_0011` columns are NULL for
  what was filed before the catalog kept them, read then from one file of the study;
- counted from the catalog: the Number Of ... Related ... keys and ModalitiesInStudy;
- an archived file's header (only the header is read): any other key at SERIES level (one
  file of the series) and IMAGE level (the instance's file);
- nowhere: other keys at PATIENT and STUDY level, and sequences as matching keys, are
  returned empty and the answers' status is 0xFF01 (optional keys not supported).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from services.receiver.matching import CombinedDateTime, KeyNotMatchable, Match, match_of
from shared.catalog.models import Instance, Patient, Series, Study


class Level(IntEnum):
    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class Model(Enum):
    PATIENT_ROOT = str(PatientRootQueryRetrieveInformationModelFind)
    STUDY_ROOT = str(StudyRootQueryRetrieveInformationModelFind)

    @property
    def top(self) -> Level:
        return Level.PATIENT if self is Model.PATIENT_ROOT else Level.STUDY


UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class CatalogKey:
    level: Level
    column: Any  # the catalog column holding the key's value
    folded: bool = False  # matched without regard to case (person names)


CATALOG_KEYS = {
    "PatientName": CatalogKey(Level.PATIENT, Patient.patient_name, folded=True),
    "PatientID": CatalogKey(Level.PATIENT, Patient.patient_id),
    "PatientBirthDate": CatalogKey(Level.PATIENT, Patient.birth_date),
    "PatientSex": CatalogKey(Level.PATIENT, Patient.sex),
    "StudyInstanceUID": CatalogKey(Level.STUDY, Study.study_instance_uid),
    "StudyDate": CatalogKey(Level.STUDY, Study.study_date),
    "StudyTime": CatalogKey(Level.STUDY, Study.study_time),
    "AccessionNumber": CatalogKey(Level.STUDY, Study.accession_number),
    "StudyDescription": CatalogKey(Level.STUDY, Study.description),
    "ReferringPhysicianName": CatalogKey(Level.STUDY, Study.physician_name, folded=True),
    "StudyID": CatalogKey(Level.STUDY, Study.study_id),
    "SeriesInstanceUID": CatalogKey(Level.SERIES, Series.series_instance_uid),
    "Modality": CatalogKey(Level.SERIES, Series.modality),
    "SeriesNumber": CatalogKey(Level.SERIES, Series.series_number),
    "SeriesDescription": CatalogKey(Level.SERIES, Series.description),
    "SOPInstanceUID": CatalogKey(Level.IMAGE, Instance.sop_instance_uid),
    "SOPClassUID": CatalogKey(Level.IMAGE, Instance.sop_class_uid),
    "InstanceNumber": CatalogKey(Level.IMAGE, Instance.instance_number),
}
# NULL for the rows filed before migration 0011 recorded them.
RECORDED_SINCE_0011 = frozenset({"PatientBirthDate", "PatientSex", "StudyID"})

# Counted from the catalog, at their level only.
COUNTS = {
    "NumberOfPatientRelatedStudies": Level.PATIENT,
    "NumberOfPatientRelatedSeries": Level.PATIENT,
    "NumberOfPatientRelatedInstances": Level.PATIENT,
    "NumberOfStudyRelatedSeries": Level.STUDY,
    "NumberOfStudyRelatedInstances": Level.STUDY,
    "ModalitiesInStudy": Level.STUDY,
    "NumberOfSeriesRelatedInstances": Level.SERIES,
}
# In every answer whether asked or not (PS3.4 C.4.1.1.3.2), or set by dcmdb when asked.
ANSWERED_ALWAYS = ("RetrieveAETitle", "InstanceAvailability")
_NOT_KEYS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", *ANSWERED_ALWAYS})
_LEVEL_NAMES = {level.name: level for level in Level}


class Source(Enum):
    CATALOG = "catalog"
    COUNT = "count"
    HEADER = "header"
    NONE = "none"


@dataclass(frozen=True)
class Asked:
    """One key of the identifier, as each answer fills it."""

    tag: int
    keyword: str  # "" for a tag pydicom does not know
    vr: str
    source: Source


class IdentifierRefused(ValueError):
    """An identifier dcmdb does not answer: the reason goes back as the Error Comment."""


@dataclass(frozen=True)
class Query:
    model: Model
    level: Level
    catalog: tuple[tuple[str, Match], ...]  # keyword and matching, in SQL
    modalities: Match | None  # ModalitiesInStudy: a series of the study matches
    header: tuple[Match, ...]  # matched on a file's header
    asked: tuple[Asked, ...]
    unsupported: bool  # some key is neither matched nor returned as asked: 0xFF01
    asks_character_set: bool = False
    study_moment: CombinedDateTime | None = None  # StudyDate and StudyTime, combined

    def asks(self, keyword: str) -> bool:
        return any(key.keyword == keyword for key in self.asked)

    @property
    def reads_headers(self) -> bool:
        return bool(self.header) or any(key.source is Source.HEADER for key in self.asked)


def parse(model: Model, identifier: Dataset, *, combined_date_time: bool = False) -> Query:
    """What `identifier` asks in `model`; IdentifierRefused when it is not a query dcmdb
    answers (no level or the wrong one, a unique key above missing, a value no rule reads).
    `combined_date_time`: the SCU negotiated combined date-time matching (`matching`)."""
    level = _level(model, identifier)
    catalog: list[tuple[str, Match]] = []
    header: list[Match] = []
    modalities: Match | None = None
    asked: list[Asked] = []
    unsupported = False
    charset = "SpecificCharacterSet" in identifier
    for element in identifier:
        tag, keyword = int(element.tag), keyword_for_tag(element.tag)
        if keyword in _NOT_KEYS or BaseTag(tag).element == 0:  # group lengths
            continue
        vr = _vr(element)
        source = _source(keyword, vr, level, BaseTag(tag).is_private)
        try:
            match = match_of(keyword, vr, element.value, folded=_folded(keyword, vr))
        except KeyNotMatchable as exc:
            raise IdentifierRefused(str(exc)) from None
        if match is not None:
            if keyword == "ModalitiesInStudy" and level == Level.STUDY:
                modalities = match
            elif source is Source.CATALOG:
                catalog.append((keyword, match))
            elif source is Source.HEADER:
                header.append(match)
            else:
                unsupported = True  # asked to match on what dcmdb cannot match on
        if vr == "SQ" and element.value:
            unsupported = True  # sequence matching is not supported
        unsupported |= source is Source.NONE
        asked.append(Asked(tag, keyword, vr, source))
    _check_hierarchy(model, level, dict(catalog))
    unique = UNIQUE_KEYS[level]
    if not any(key.keyword == unique for key in asked):
        asked.insert(0, Asked(_tag(unique), unique, dictionary_VR(unique), Source.CATALOG))
    moment = None
    if combined_date_time:
        keys = dict(catalog)
        moment = CombinedDateTime.of(keys.get("StudyDate"), keys.get("StudyTime"))
        if moment is not None:
            catalog = [(k, m) for k, m in catalog if k not in ("StudyDate", "StudyTime")]
    return Query(
        model, level, tuple(catalog), modalities, tuple(header), tuple(asked), unsupported,
        charset, moment,
    )  # fmt: skip


def _level(model: Model, identifier: Dataset) -> Level:
    name = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not name:
        raise IdentifierRefused("QueryRetrieveLevel (0008,0052) is missing")
    level = _LEVEL_NAMES.get(name)
    if level is None or level < model.top:
        allowed = "/".join(lv.name for lv in Level if lv >= model.top)
        raise IdentifierRefused(f"QueryRetrieveLevel {name[:16]!r} is not {allowed}")
    return level


def _check_hierarchy(model: Model, level: Level, catalog: dict[str, Match]) -> None:
    for above in Level:
        if model.top <= above < level:
            keyword = UNIQUE_KEYS[above]
            match = catalog.get(keyword)
            if match is None or len(match.values) != 1 or _has_wildcard(match.values[0]):
                raise IdentifierRefused(f"a query at {level.name} level needs one {keyword}")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _source(keyword: str, vr: str, level: Level, private: bool) -> Source:
    key = CATALOG_KEYS.get(keyword)
    if key is not None:  # a key of a level below is no key of this one
        return Source.CATALOG if key.level <= level else Source.NONE
    if COUNTS.get(keyword) == level:
        return Source.COUNT
    if level >= Level.SERIES and not private and keyword and keyword not in COUNTS:
        return Source.HEADER
    return Source.NONE


def _folded(keyword: str, vr: str) -> bool:
    key = CATALOG_KEYS.get(keyword)
    return key.folded if key is not None else vr == "PN"


def _vr(element: Any) -> str:
    vr = str(element.VR)
    if vr in ("UN", "OB or OW", "US or SS", "US or SS or OW") and element.keyword:
        vr = str(dictionary_VR(element.tag)).split(" ")[0]
    return vr


def _tag(keyword: str) -> int:
    return int(tag_for_keyword(keyword) or 0)

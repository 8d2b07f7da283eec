"""A QIDO-RS search as the client wrote it (PS3.18 8.3.4), checked and turned into what the
catalog compares: matching keys by keyword or tag, ``fuzzymatching``, ``limit``, ``offset``
and ``includefield``.

Each attribute the catalog holds has a level and a way it may be matched (`ATTRIBUTES`); a
search may match attributes of its own level and those above it (``/series?PatientName=``),
and return any attribute at all: those the catalog does not hold are read from a file of the
study, series or instance (`Search.from_files`). Anything else is a `BadSearch` that says what
is accepted, answered 400: a misspelt key never widens a search silently.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from services.api.parameters import DateRange, date_range

MAX_RESULTS = 1000  # a page without a limit, or with a larger one, is cut here (with a Warning)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


class Level(IntEnum):
    STUDY = 1
    SERIES = 2
    INSTANCE = 3


class Matching(Enum):
    UID = "a UID or a list of UIDs"
    PERSON_NAME = "a name, * and ? as wildcards, in any case"
    TEXT = "a value, * and ? as wildcards"
    CODE = "a code or a list of codes"
    DATE = "YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left open)"
    NUMBER = "an integer"


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    matching: Matching | None  # None: returned, never matched

    @functools.cached_property
    def tag(self) -> str:
        return f"{tag_for_keyword(self.keyword):08X}"

    @functools.cached_property
    def vr(self) -> str:
        return str(dictionary_VR(self.keyword))


# What the catalog holds, by level; every result of a level carries all of its level's.
ATTRIBUTES = {
    a.keyword: a
    for a in (
        Attribute("StudyInstanceUID", Level.STUDY, Matching.UID),
        Attribute("PatientName", Level.STUDY, Matching.PERSON_NAME),
        Attribute("PatientID", Level.STUDY, Matching.TEXT),
        Attribute("StudyDate", Level.STUDY, Matching.DATE),
        Attribute("StudyTime", Level.STUDY, None),
        Attribute("PatientBirthDate", Level.STUDY, None),
        Attribute("PatientSex", Level.STUDY, None),
        Attribute("StudyID", Level.STUDY, None),
        Attribute("AccessionNumber", Level.STUDY, Matching.TEXT),
        Attribute("StudyDescription", Level.STUDY, Matching.TEXT),
        Attribute("ReferringPhysicianName", Level.STUDY, Matching.PERSON_NAME),
        Attribute("ModalitiesInStudy", Level.STUDY, Matching.CODE),
        Attribute("NumberOfStudyRelatedSeries", Level.STUDY, None),
        Attribute("NumberOfStudyRelatedInstances", Level.STUDY, None),
        Attribute("SeriesInstanceUID", Level.SERIES, Matching.UID),
        Attribute("Modality", Level.SERIES, Matching.CODE),
        Attribute("SeriesNumber", Level.SERIES, Matching.NUMBER),
        Attribute("SeriesDescription", Level.SERIES, Matching.TEXT),
        Attribute("NumberOfSeriesRelatedInstances", Level.SERIES, None),
        Attribute("SOPInstanceUID", Level.INSTANCE, Matching.UID),
        Attribute("SOPClassUID", Level.INSTANCE, Matching.UID),
        Attribute("InstanceNumber", Level.INSTANCE, Matching.NUMBER),
        Attribute("AvailableTransferSyntaxUID", Level.INSTANCE, None),
    )
}
_IDENTIFYING = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# Returned at instance level by default, read from each instance's file (PS3.18 Table 6.7.1-2a).
INSTANCE_FILE_DEFAULTS = ("Rows", "Columns", "BitsAllocated", "NumberOfFrames")


class BadSearch(ValueError):
    """A search that cannot be run as written; the message says why and what is accepted."""


@dataclass(frozen=True)
class Match:
    attribute: Attribute
    values: tuple[str, ...] = ()  # UID, CODE: any of them; TEXT, PERSON_NAME: one pattern
    dates: DateRange | None = None
    number: int | None = None

    @property
    def has_wildcards(self) -> bool:
        return any("*" in value or "?" in value for value in self.values)


@dataclass(frozen=True)
class Search:
    level: Level
    within: Level | None  # the level the path fixes (/studies/{uid}/series: STUDY), if any
    matches: tuple[Match, ...] = ()
    returned: frozenset[str] = frozenset()  # catalog attributes beyond the levels shown
    from_files: tuple[str, ...] = ()  # keywords read from the files
    fuzzy: bool = False
    limit: int = MAX_RESULTS
    offset: int = 0
    cut_at_maximum: bool = False  # the server's maximum is the limit: a Warning says more follow

    @property
    def shown(self) -> list[Level]:
        """The levels whose catalog attributes every result carries."""
        top = Level.STUDY if self.within is None else Level(self.within + 1)
        return [level for level in Level if top <= level <= self.level]

    def catalog_keywords(self) -> list[str]:
        """The catalog's attributes every result carries: those of the levels shown, those
        asked for, and the UIDs that say where the result is."""
        shown = set(self.shown)
        return [
            keyword
            for keyword, attribute in ATTRIBUTES.items()
            if attribute.level in shown
            or keyword in self.returned
            or (keyword in _IDENTIFYING and attribute.level <= self.level)
        ]


def parse_search(
    level: Level, within: Level | None, pairs: Iterable[tuple[str, str]], fixed: dict[str, str]
) -> Search:
    """The search of a QIDO-RS request's query `pairs` (in order, repeats kept) at `level`;
    `fixed` holds the UIDs of the path (StudyInstanceUID, SeriesInstanceUID)."""
    matches = {k: Match(ATTRIBUTES[k], (uid,)) for k, uid in fixed.items()}
    returned: set[str] = set()
    files: list[str] = list(INSTANCE_FILE_DEFAULTS) if level is Level.INSTANCE else []
    fuzzy, limit, offset, seen = False, None, 0, set()
    for name, value in pairs:
        if name in seen and name != "includefield":
            raise BadSearch(f"{name} is given more than once; give it once")
        seen.add(name)
        if name == "includefield":
            for entry in (v.strip() for v in value.split(",")):
                if entry == "all":
                    returned |= {k for k, a in ATTRIBUTES.items() if a.level <= level}
                elif entry:
                    _include(_keyword(entry), level, returned, files)
        elif name == "fuzzymatching":
            fuzzy = _boolean(name, value)
        elif name == "limit":
            limit = _count(name, value, least=1)
        elif name == "offset":
            offset = _count(name, value, least=0)
        else:
            keyword = _keyword(name)
            if keyword in fixed:
                raise BadSearch(f"{keyword} is given by the path; leave it out of the query")
            if value != "":  # empty: universal matching, the attribute returned
                matches[keyword] = _match(keyword, value, level)
            else:
                _include(keyword, level, returned, files)
    cut = limit is None or limit > MAX_RESULTS
    return Search(
        level, within, tuple(matches.values()), frozenset(returned), tuple(files),
        fuzzy, MAX_RESULTS if limit is None or cut else limit, offset, cut,
    )  # fmt: skip


def _include(keyword: str, level: Level, returned: set[str], files: list[str]) -> None:
    """Return `keyword` too: from the catalog when it holds it at this level or above, else
    from the files (a series' Modality asked of a study: its first instance's)."""
    if keyword in ATTRIBUTES and ATTRIBUTES[keyword].level <= level:
        returned.add(keyword)
    elif keyword not in files:
        files.append(keyword)


def _keyword(name: str) -> str:
    """The keyword of an attribute named by keyword or by tag (``00100010``)."""
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return str(keyword)
        raise BadSearch(f"{name} is no attribute of the DICOM dictionary")
    if tag_for_keyword(name) is None:
        raise BadSearch(
            f"{name!r} is neither a DICOM keyword nor a tag (8 hex digits, e.g. 00100010), nor "
            "one of limit, offset, fuzzymatching, includefield"
        )
    return name


def _match(keyword: str, value: str, level: Level) -> Match:
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None or attribute.matching is None or attribute.level > level:
        keys = ", ".join(
            k for k, a in ATTRIBUTES.items() if a.matching is not None and a.level <= level
        )
        raise BadSearch(f"{keyword} cannot be matched here; the matching keys here are: {keys}")
    kind = attribute.matching
    if kind is Matching.UID:
        uids = _values(value)
        if bad := [uid for uid in uids if len(uid) > 64 or not _UID.match(uid)]:
            raise BadSearch(f"{keyword}: {bad[0]!r} is not a UID; {kind.value}")
        return Match(attribute, uids)
    if kind is Matching.CODE:
        return Match(attribute, tuple(code.upper() for code in _values(value)))
    if kind is Matching.DATE:
        try:
            return Match(attribute, dates=date_range(value))
        except ValueError as exc:
            raise BadSearch(f"{keyword}: {exc}") from None
    if kind is Matching.NUMBER:
        return Match(attribute, number=_integer(keyword, value))
    if len(value) > 256:
        raise BadSearch(f"{keyword}: the value is too long (at most 256 characters)")
    return Match(attribute, (value,))


def _values(value: str) -> tuple[str, ...]:
    """A list as QIDO-RS writes it: comma separated (or DICOM's backslash)."""
    values = tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip())
    if not values or len(values) > 1000:
        raise BadSearch(f"{value[:80]!r}: give 1 to 1000 values, comma separated")
    return values


def _integer(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadSearch(f"{name}: {value[:80]!r} is not an integer") from None
    if not -(2**31) <= number < 2**31:
        raise BadSearch(f"{name}: {number} is out of range")
    return number


def _count(name: str, value: str, least: int) -> int:
    number = _integer(name, value)
    if number < least:
        raise BadSearch(f"{name} must be {least} or more")
    return number


def _boolean(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise BadSearch(f"{name} is true or false")
    return value.lower() == "true"

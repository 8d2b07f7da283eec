"""C-FIND matching (PS3.4 C.2.2.2): what one key of an identifier asks for, as a condition
on a catalog column (SQL) and as a test of a value read from an archived file's header.

================  ==============================================  ==========================
key value         matching                                        VRs
================  ==============================================  ==========================
empty, ``*``      universal: every entity matches                 all
``A\\B\\C``       list of UIDs: any of them                       UI
``*`` and ``?``   wildcard, ``*`` any run, ``?`` one character    text (AE CS LO LT PN SH ST UC UT)
``A-B``           range, inclusive; ``-B`` and ``A-`` open        DA TM DT
anything else     single value: equal                             all
================  ==============================================  ==========================

Person names match without regard to case, as Orthanc does by default (its
``CaseSensitivePN`` is false): desktops type names in any case, and the scanners' upper case
is a habit, not a rule. Every other text matches case-sensitively, as PS3.4 says. A value
list of another VR than UI matches any of its values (ModalitiesInStudy ``MR\\CT``).
Sequence matching is not supported (see `levels`).

Combined date-time matching (PS3.4 C.2.2.2.5.1), when the SCU negotiated it: a date range
and a time range are one range of moments, StudyDate ``20240105-20240107`` with StudyTime
``1000-1800`` from 5 January 10:00 to 7 January 18:00 (`CombinedDateTime`); without it the
two ranges match each on its own, every day between those hours.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.multival import MultiValue
from sqlalchemy import ColumnElement, and_, func, or_

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "AS"})
_NUMBER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "DS", "FL", "FD"})
_LIKE_ESCAPE = "\\"
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DATETIME = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")


class KeyNotMatchable(ValueError):
    """A key's value that no matching rule reads: an identifier the SCU must correct."""


@dataclass(frozen=True)
class Match:
    """One key's matching: a test of catalog columns and of header values."""

    keyword: str
    vr: str
    values: tuple[str, ...]  # one value, or a list (UI, and any of a multi-valued key)
    folded: bool = False  # compared without regard to case

    def sql(self, column: Any, dialect: str) -> ColumnElement[bool]:
        """The condition on `column` (a catalog column of this key) in SQL."""
        return or_(*(self._sql_one(column, value, dialect) for value in self.values))

    def accepts(self, found: Sequence[str]) -> bool:
        """Whether an entity whose element holds `found` (its values, as text) matches."""
        return any(self._accepts_one(value, have) for value in self.values for have in found)

    def _sql_one(self, column: Any, value: str, dialect: str) -> ColumnElement[bool]:
        if self.vr in ("DA", "TM", "DT"):
            low, high = _bounds(self.vr, value)
            return and_(
                column.is_not(None),
                column != "",
                *([column >= low] if low else []),
                *([column <= high] if high else []),
            )
        if self.vr in _NUMBER_VRS:
            return column == _number(self.keyword, value)  # type: ignore[no-any-return]
        if _is_wildcard(self.vr, value):
            return _like(column, value, self.folded, dialect)
        if self.folded:
            return func.lower(column) == value.lower()
        return column == value  # type: ignore[no-any-return]

    def _accepts_one(self, value: str, have: str) -> bool:
        if self.vr in ("DA", "TM", "DT"):
            low, high = _bounds(self.vr, value)
            return bool(have) and (not low or have >= low) and (not high or have <= high)
        if self.vr in _NUMBER_VRS:
            try:
                return float(have) == float(value)
            except ValueError:
                return False
        if self.folded:
            value, have = value.lower(), have.lower()
        if _is_wildcard(self.vr, value):
            return fnmatch.fnmatchcase(have, value.replace("[", "[[]"))
        return have == value


@dataclass(frozen=True)
class CombinedDateTime:
    """A DA key and a TM key of one entity matched as one range of moments."""

    date: Match
    time: Match

    def sql(self, date: Any, time: Any) -> ColumnElement[bool]:
        (date_low, date_high), (time_low, time_high) = self._bounds()
        conditions = [date.is_not(None), date != ""]
        if date_low:
            later = or_(date > date_low, and_(date == date_low, time >= time_low))
            conditions.append(later if time_low else date >= date_low)
        if date_high:
            earlier = or_(date < date_high, and_(date == date_high, time <= time_high))
            conditions.append(earlier if time_high else date <= date_high)
        return and_(*conditions)

    def _bounds(self) -> tuple[tuple[str, str], tuple[str, str]]:
        return _bounds("DA", self.date.values[0]), _bounds("TM", self.time.values[0])

    @staticmethod
    def of(date: Match | None, time: Match | None) -> CombinedDateTime | None:
        """The combined range of two keys, None unless both are one value or range each."""
        if date is None or time is None or len(date.values) != 1 or len(time.values) != 1:
            return None
        return CombinedDateTime(date, time)


def match_of(keyword: str, vr: str, raw: object, *, folded: bool = False) -> Match | None:
    """The matching a key asks for; None when it is universal (returned, not matched).
    Raises KeyNotMatchable for a value no rule reads (a date range that is no date)."""
    values = _values(raw)
    if not values or all(set(v) <= {"*"} for v in values):
        return None
    if vr == "SQ":
        return None  # sequence matching is optional and not supported: see `levels`
    match = Match(keyword, vr, values, folded)
    for value in values:  # refused now, not once per row
        if vr in ("DA", "TM", "DT"):
            _bounds(vr, value, keyword)
        elif vr in _NUMBER_VRS:
            _number(keyword, value)
    return match


def _values(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = list(raw) if isinstance(raw, (list, tuple, MultiValue)) else [raw]
    return tuple(text for item in items if (text := str(item).strip()))


def _is_wildcard(vr: str, value: str) -> bool:
    return vr in _TEXT_VRS and ("*" in value or "?" in value)


def _like(column: Any, pattern: str, folded: bool, dialect: str) -> ColumnElement[bool]:
    if dialect == "sqlite" and not folded:
        # SQLite's LIKE ignores the case of ASCII letters; GLOB is case-sensitive.
        glob = re.sub(r"([\[\]])", r"[\1]", pattern)
        return column.op("GLOB")(glob)  # type: ignore[no-any-return]
    escaped = (
        pattern.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
        .replace("*", "%")
        .replace("?", "_")
    )
    if folded:
        return func.lower(column).like(escaped.lower(), escape=_LIKE_ESCAPE)
    return column.like(escaped, escape=_LIKE_ESCAPE)  # type: ignore[no-any-return]


def _bounds(vr: str, value: str, keyword: str = "") -> tuple[str, str]:
    """The inclusive (low, high) text bounds of a DA, TM or DT value or range; '' is open.

    Catalog and headers keep DICOM's text, which sorts as the moment it names when the
    bounds are padded: a high bound of ``1015`` is the end of that minute, ``101559.999999``.
    """
    low, dash, high = value.partition("-") if vr != "DT" else _split_datetime(value)
    if not dash:
        high = low
    pattern = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME}[vr]
    for bound in (low, high):
        if bound and not pattern.fullmatch(bound):
            raise KeyNotMatchable(f"{keyword or vr} {value!r} is not a {vr} value or range")
    if not low and not high:
        raise KeyNotMatchable(f"{keyword or vr} {value!r} is an empty range")
    if vr == "TM":
        return low, _end_of(high, "235959.999999")
    if vr == "DT":
        return low[:26], _end_of(high[:26], "99991231235959.999999")
    return low, high


def _end_of(bound: str, latest: str) -> str:
    """The last moment a partial time or date-time names: its missing digits at their most."""
    if not bound:
        return ""
    return bound + latest[len(bound) :] if len(bound) < len(latest) else bound


def _split_datetime(value: str) -> tuple[str, str, str]:
    # A DT may end in a UTC offset (+0100 or -0500): the range's dash is the one that
    # follows 4 or more digits of a date, or leads the value.
    found = re.fullmatch(r"([^-]*(?:[+-]\d{4})?)?(-)(.*)", value)
    if found is None:
        return value, "", ""
    return found.group(1) or "", "-", found.group(3)


def _number(keyword: str, value: str) -> int | float:
    try:
        number = float(value)
    except ValueError:
        raise KeyNotMatchable(f"{keyword} {value!r} is not a number") from None
    return int(number) if number.is_integer() else number

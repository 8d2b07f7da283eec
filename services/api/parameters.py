"""Query parameters as lab scripts write them, turned into what the catalog compares.

Each parser raises ValueError with a message that says what is accepted; FastAPI turns it
into a 422 naming the parameter. `known_parameters_only` refuses a parameter a route does
not take, or one given twice.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError

DATE_FORMAT = "%Y%m%d"
_DATE_HELP = (
    "use YYYYMMDD, a range YYYYMMDD-YYYYMMDD (either end may be left open), today or yesterday"
)
_LIKE_ESCAPE = "\\"


@dataclass(frozen=True)
class DateRange:
    first: str | None  # YYYYMMDD, inclusive
    last: str | None


def date_range(text: str, today: dt.date | None = None) -> DateRange:
    """``20240131``, ``20240101-20240131``, ``20240101-``, ``-20240131``, today, yesterday."""
    today = today or dt.date.today()
    value = text.strip().lower()
    if value in ("today", "yesterday"):
        day = today if value == "today" else today - dt.timedelta(days=1)
        return DateRange(day.strftime(DATE_FORMAT), day.strftime(DATE_FORMAT))
    if "-" in value:
        first, _, last = value.partition("-")
        if not first and not last:
            raise ValueError(_DATE_HELP)
        result = DateRange(_day(first) if first else None, _day(last) if last else None)
        if result.first and result.last and result.first > result.last:
            raise ValueError(f"the range ends before it starts; {_DATE_HELP}")
        return result
    single = _day(value)
    return DateRange(single, single)


def _day(text: str) -> str:
    try:
        if len(text) != 8:
            raise ValueError
        return dt.datetime.strptime(text, DATE_FORMAT).strftime(DATE_FORMAT)
    except ValueError:
        raise ValueError(f"{text!r} is not a date; {_DATE_HELP}") from None


ISO_TIME_PATTERN = (
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$"
)


def utc_time(text: str) -> dt.datetime:
    """An ISO 8601 date or time; a naive one is taken as UTC."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time such as 2024-05-01T08:00:00Z") from None
    # As UTC: SQLite compares stored times as text, without their offset.
    return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


ISO_DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


def optional_day(text: str | None) -> dt.date | None:
    """An ISO 8601 day (2024-05-01) of an optional parameter; nothing else reads as one (no
    number of seconds, as pydantic's own date would take)."""
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a day such as 2024-05-01") from None


def optional_utc_time(text: str | None) -> dt.datetime | None:
    """`utc_time` of an optional parameter."""
    return None if text is None else utc_time(text)


def like_pattern(text: str, *, wildcards: bool) -> str:
    """A LIKE pattern (escape character backslash): ``*`` matches anything when `wildcards`,
    else the text matches as a substring; LIKE's own ``%`` and ``_`` match themselves."""
    escaped = text.replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2).replace("%", r"\%").replace("_", r"\_")
    if wildcards:
        return escaped.replace("*", "%")
    return f"%{escaped}%"


LIKE_ESCAPE = _LIKE_ESCAPE


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after (key, id) in the listing's order."""

    sort: str
    order: str
    key: Any
    id: int

    def encode(self) -> str:
        raw = json.dumps([self.sort, self.order, self.key, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            sort, order, key, row = json.loads(raw)
            if not isinstance(sort, str) or not isinstance(order, str) or type(row) is not int:
                raise ValueError
            if not isinstance(key, str):
                raise ValueError
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise ValueError(
                "not a cursor from this API: pass the 'next' value of a page"
            ) from None
        return cls(sort, order, key, row)


def invalid(where: str, name: str, message: str) -> RequestValidationError:
    """A 422 in FastAPI's own shape (as for every other bad parameter), naming `name`;
    `where` is "query", "path" or "body"."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (where, name), "msg": message, "input": None}]
    )


# Not FastAPI's query-parameter models (`extra="forbid"`): they keep the last of a repeated
# parameter, say "Extra inputs are not permitted" without naming what the route accepts, and
# guard only the routes that declare a model, where this check guards every route.
def known_parameters_only(request: Request) -> None:
    """A misspelt filter is a 422, not a silently unfiltered listing; so is one given twice,
    of which FastAPI would silently keep the last (``modality=MR&modality=CT`` is not both)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in _query_params(dependant)}
    given: set[str] = set()
    # Parsed again: Starlette drops a parameter with an empty name, which is unknown too.
    for name, value in parse_qsl(request.url.query, keep_blank_values=True):
        if name not in known:
            accepted = ", ".join(sorted(known)) or "none"
            _refuse(
                name, value, "extra_forbidden", f"unknown parameter; this route accepts: {accepted}"
            )
        if name in given:
            _refuse(name, value, "value_error", "given more than once; give it once")
        given.add(name)


def _refuse(name: str, value: str, kind: str, message: str) -> NoReturn:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    raise RequestValidationError(
        [{"type": kind, "loc": ("query", name), "msg": message, "input": value}]
    )


def _query_params(dependant: Any) -> Iterator[Any]:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_params(sub)

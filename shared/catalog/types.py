"""Column types of the catalog that hold more than their SQL type says."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from sqlalchemy import DateTime, Dialect, String
from sqlalchemy.types import TypeDecorator


def now() -> datetime:
    """The time now, in UTC, as `UtcDateTime` columns hold it."""
    return datetime.now(UTC)


E = TypeVar("E", bound=StrEnum)


class UtcDateTime(TypeDecorator[datetime]):
    """A moment in UTC: stored as ``DateTime(timezone=True)``, read back aware.

    SQLite keeps no offset and hands back naive datetimes, PostgreSQL hands them back in
    the session's zone; both come back here as aware UTC, so no reader has to mend them.
    A naive value given to it is taken as UTC, as everything dcmdb stores is. Values are
    written in UTC because SQLite compares stored times as text, without their offset.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else _as_utc(value)


def _as_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


class StateColumn(TypeDecorator[E], Generic[E]):
    """One of a `StrEnum`'s values, stored as its plain text (a ``String`` column)."""

    impl = String
    cache_ok = True

    def __init__(self, states: type[E]) -> None:
        super().__init__()
        self.states = states  # named as the argument: SQLAlchemy's statement cache keys on it

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> E | None:
        return None if value is None else self.states(value)

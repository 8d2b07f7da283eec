"""The notifier's two ways into the catalog, and the one insert it relies on.

Looks that usually find nothing (is there a webhook for this lab? a delivery due? a job
finished?) go through ``reader`` sessions; the writes through ``writer`` sessions, which
on SQLite take the write lock as they begin. A notifier polling an idle catalog thus
never holds the lock the sorter needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.catalog.database import create_catalog_engine, open_catalog, session_factory
from shared.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class Catalog:
    reader: sessionmaker[Session]
    writer: sessionmaker[Session]
    engines: tuple[Engine, ...] = ()

    @classmethod
    def open(cls, url: str) -> Catalog:
        """Wait for the database and migrate it, as every service does at start."""
        engine, reader = open_catalog(url)
        writer = create_catalog_engine(url, writer=True)
        return cls(reader, session_factory(writer), (engine, writer))

    def dispose(self) -> None:
        for engine in self.engines:
            engine.dispose()


def insert_new(session: Session, table: type, values: dict[str, Any], unique: list[str]) -> bool:
    """Insert a row unless one with the same ``unique`` columns exists (a concurrent
    insert included); whether this one was inserted."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # RETURNING says it: psycopg reports no row count for an insert (-1).
    key = [getattr(table, name) for name in unique]
    result = session.execute(
        insert(table).values(**values).on_conflict_do_nothing(index_elements=unique).returning(*key)
    )
    return result.first() is not None


def transient(action: Callable[[], T]) -> T:
    """``action``, with a catalog that does not answer as a transient error (the message
    is retried, then requeued)."""
    try:
        return action()
    except OperationalError as exc:
        raise TransientError(f"catalog unavailable: {exc.orig}") from exc

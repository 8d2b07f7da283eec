"""Opening the catalog: engine, pragmas, sessions, and migrations at start."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# An arbitrary constant: the PostgreSQL advisory lock that serialises migrations.
_MIGRATION_LOCK_KEY = 0x64636D6462


def create_catalog_engine(url: str, *, writer: bool = False, pooled: bool = True) -> Engine:
    """An engine with the settings dcmdb relies on for each backend.

    ``writer``: on SQLite, every transaction takes the write lock when it
    begins (BEGIN IMMEDIATE), so that several writing processes queue up
    instead of failing with "database is locked" when a reader turns writer.
    ``pooled=False``: no pool (nor its ping); for a caller that keeps its connections.
    """
    parsed = make_url(url)
    pool: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _owner_only(Path(parsed.database))
        engine = create_engine(url, connect_args={"timeout": 30}, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate if writer else _begin)
        return engine
    if parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    return create_engine(url, **(pool or {"pool_pre_ping": True}))


def _owner_only(database: Path) -> None:
    """Create the catalog file readable by dcmdb alone (it names every lab's patients):
    lab members pass through the data directory to reach the archive. SQLite creates its
    -wal and -shm files with the database file's mode.

    Only a file that is not there yet is opened: closing any descriptor of a file drops
    every POSIX lock the process holds on it, SQLite's too, and a process whose catalog
    connections lost their lock lets another delete the WAL under them ("disk I/O error").
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN")


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is turned off so that ours applies.
    dbapi_connection.isolation_level = None
    # WAL lets readers (the API) run while a sorter writes. FULL syncs each
    # commit: the sorter acknowledges an event only after its commit, and
    # what it acknowledged must survive a power cut.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def wait_until_reachable(engine: Engine) -> None:
    """Block until the database answers, one clear line per failed attempt."""
    delay = 1.0
    while True:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            log.warning(
                "catalog database %s is not reachable (%s); retrying in %.0f s",
                engine.url.render_as_string(hide_password=True),
                reason,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def ping(engine: Engine) -> None:
    """Ask the database for nothing; raise when it does not answer.

    On a DBAPI connection, below SQLAlchemy's transactions: a writer engine's BEGIN
    IMMEDIATE would wait behind the sorter's write lock on SQLite.
    """
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
    finally:
        connection.close()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe when several services start at once."""
    # Migrating writes: on SQLite it takes the write lock at BEGIN, or a reader
    # that turns writer while another process commits fails at once as "locked".
    migrating = create_catalog_engine(engine.url.render_as_string(False), writer=True)
    try:
        with _migration_lock(migrating), migrating.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        migrating.dispose()


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY}
                )
                connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def open_catalog(url: str, *, writer: bool = False) -> tuple[Engine, sessionmaker[Session]]:
    """What a service calls at start: wait for the database, migrate, hand out sessions."""
    engine = create_catalog_engine(url, writer=writer)
    wait_until_reachable(engine)
    migrate(engine)
    return engine, session_factory(engine)

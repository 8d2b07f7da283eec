"""The catalog schema: Alembic migrations on SQLite and PostgreSQL, run by services at once."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect, select, text

from shared.catalog import bids as _bids  # noqa: F401 - in Base too
from shared.catalog import reconciliation as _reconciliation  # noqa: F401 - in Base too
from shared.catalog import webhooks as _webhooks  # noqa: F401 - its tables are in Base too
from shared.catalog.database import MIGRATIONS, migrate, open_catalog
from shared.catalog.models import Base, Patient

pytestmark = pytest.mark.integration

TABLES = {"patients", "studies", "series", "instances", "nifti_outputs"}
TABLES |= {"retrieval_jobs", "retrieval_studies", "expected_series", "evictions"}
TABLES |= {"audit_events", "instance_history"}
TABLES |= {"webhooks", "webhook_deliveries", "notified_retrievals"}
TABLES |= {"reconciliation_runs", "reconciliation_differences"}
TABLES |= {"bids_subjects", "bids_sessions"}


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def versions(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(text("SELECT version_num FROM alembic_version")))


def schema(engine: Engine) -> dict[str, object]:
    """Tables with their columns, unique constraints and indexes, as the database reports them."""
    found = inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
            sorted(u["name"] or "" for u in found.get_unique_constraints(table)),
            sorted(i["name"] or "" for i in found.get_indexes(table)),
        )
        for table in sorted(found.get_table_names())
    }


def test_migrations_create_the_tables_the_models_describe(catalog_url: str) -> None:
    engine, _sessions = open_catalog(catalog_url, writer=True)
    try:
        assert set(inspect(engine).get_table_names()) == TABLES | {"alembic_version"}
        assert versions(engine) == [head_revision()]
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == [], "the migrations and shared/catalog/models.py disagree"
        uniques = {
            table: {
                u["name"]: u["column_names"] for u in inspect(engine).get_unique_constraints(table)
            }
            for table in ("studies", "series")
        }
        # The sorter relies on these to detect two sorters giving one folder to two studies.
        assert uniques["studies"]["uq_studies_folder"] == ["physician_folder", "folder"]
        assert uniques["series"]["uq_series_folder"] == ["study_pk", "folder"]
    finally:
        engine.dispose()


def test_migrating_twice_changes_nothing(catalog_url: str) -> None:
    engine, sessions = open_catalog(catalog_url, writer=True)
    try:
        with sessions.begin() as session:
            session.add(Patient(patient_id="P1", patient_name="Doe^Jane"))
        before = schema(engine)
        migrate(engine)
        migrate(engine)
        assert schema(engine) == before
        assert versions(engine) == [head_revision()]
        with sessions() as session:
            assert session.scalars(select(Patient.patient_id)).all() == ["P1"]
    finally:
        engine.dispose()
    engine, sessions = open_catalog(catalog_url, writer=True)  # a service restarting
    try:
        assert schema(engine) == before
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Patient)) == 1
    finally:
        engine.dispose()


def _open_and_write(url: str, number: int, barrier: object, errors: object) -> None:
    try:
        barrier.wait(timeout=60)  # type: ignore[attr-defined]
        engine, sessions = open_catalog(url, writer=number % 2 == 0)  # sorters and the API
        with sessions.begin() as session:
            session.add(Patient(patient_id=f"P{number}", patient_name=""))
        engine.dispose()
    except BaseException:
        errors.put(f"process {number}:\n{traceback.format_exc()}")  # type: ignore[attr-defined]
        raise


@pytest.mark.timeout(120)
def test_services_starting_at_once_all_open_the_fresh_catalog(catalog_url: str) -> None:
    processes = 4
    spawn = multiprocessing.get_context("spawn")
    barrier, errors = spawn.Barrier(processes), spawn.Queue()
    workers = [
        spawn.Process(target=_open_and_write, args=(catalog_url, n, barrier, errors))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(90)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert [w.exitcode for w in workers] == [0] * processes
    engine, sessions = open_catalog(catalog_url)
    try:
        assert versions(engine) == [head_revision()]
        with sessions() as session:
            ids = session.scalars(select(Patient.patient_id).order_by(Patient.patient_id)).all()
        assert ids == [f"P{n}" for n in range(processes)]
    finally:
        engine.dispose()


def test_a_new_sqlite_catalog_is_readable_by_dcmdb_alone(tmp_path: Path) -> None:
    """Lab members pass through the data directory to reach their folders on the share."""
    from shared.catalog.database import open_catalog

    engine, _ = open_catalog(f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}")
    engine.dispose()
    made = [p for p in (tmp_path / "data").iterdir() if not p.name.endswith(".lock")]
    assert (tmp_path / "data" / "catalog.sqlite") in made
    for path in made:  # the catalog, its -wal and -shm files
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_opening_the_catalog_again_keeps_the_locks_of_the_connections_open(
    tmp_path: Path,
) -> None:
    """A process that opens a second engine (the API's writer beside its reader) keeps
    SQLite's lock on the file: else another process that writes and closes its last
    connection deletes the WAL under the first one's ("disk I/O error")."""
    import subprocess
    import sys

    from shared.catalog.database import create_catalog_engine, open_catalog

    database = tmp_path / "catalog.sqlite"
    engine, _ = open_catalog(f"sqlite:///{database}")
    with engine.connect() as connection:
        connection.execute(text("SELECT count(*) FROM studies"))
    second = create_catalog_engine(f"sqlite:///{database}", writer=True)
    another_service = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute(\"INSERT INTO patients (patient_id, patient_name) VALUES ('x', '')\")\n"
        "c.close()\n"
    )
    try:
        subprocess.run([sys.executable, "-c", another_service, str(database)], check=True)
        assert (tmp_path / "catalog.sqlite-wal").exists()
    finally:
        second.dispose()
        engine.dispose()

"""Fixtures for the real things the tests talk to.

Every test that needs RabbitMQ gets a virtual host of its own, every test that
needs PostgreSQL a database of its own; both are created on the servers that
run on this machine and removed afterwards. A missing server, DCMTK tool or
test data folder fails the test: nothing here skips.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import psycopg
import pytest

from services.sorter.filing import Filer
from shared.catalog.database import open_catalog
from shared.logs import configure_logging
from tests.arrivals import Sorter

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata" / "dicom"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fuzzing", "the receiver's PDU fuzzing (scripts/fuzz-pdus)")
    group.addoption("--fuzz-cases", type=int, default=3000, help="mutated PDU cases to send")
    group.addoption("--fuzz-seed", type=int, default=1, help="seed of the first case")


def require_tool(name: str) -> str:
    """The system's tool of this name: pynetdicom's own storescu and friends in the
    virtualenv's bin/ (first on PATH under ``uv run``) are not the DCMTK peers."""
    venv_bin = os.path.join(sys.prefix, "bin")
    search = os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if os.path.realpath(entry) != os.path.realpath(venv_bin)
    )
    path = shutil.which(name, path=search)
    if path is None:
        pytest.fail(f"{name} is not installed (bash .ci/run installs what the tests need)")
    return path


@pytest.fixture(scope="session")
def testdata() -> Path:
    if not (TESTDATA / "INVENTORY.md").is_file():
        pytest.fail(f"the test data is missing: expected it at {TESTDATA}")
    return TESTDATA


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A fresh RabbitMQ virtual host, so that no test sees another's queues."""
    yield from fresh_vhost()


def fresh_vhost() -> Iterator[str]:
    rabbitmqctl = require_tool("rabbitmqctl")
    vhost = f"dcmdb-test-{uuid.uuid4().hex[:10]}"
    subprocess.run([rabbitmqctl, "-q", "add_vhost", vhost], check=True)
    subprocess.run(
        [rabbitmqctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
    )
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    subprocess.run([rabbitmqctl, "-q", "delete_vhost", vhost], check=False)


def fresh_postgres_database() -> Iterator[str]:
    name = f"dcmdb_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from fresh_postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The catalog on each supported backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    else:
        yield from fresh_postgres_database()


@pytest.fixture
def sorter(catalog_url: str, tmp_path: Path) -> Iterator[Sorter]:
    """The sorter's filing logic against each catalog backend, on a fresh data directory."""
    engine, sessions = open_catalog(catalog_url, writer=True)
    data = tmp_path / "data"
    paths = data / "archive", data / "quarantine"
    yield Sorter(data, *paths, sessions, Filer(sessions, data, *paths))
    engine.dispose()


@dataclass
class JsonLog:
    logger: logging.Logger
    stream: io.StringIO

    def lines(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def json_log() -> Iterator[JsonLog]:
    """Logging configured as the sorter's, in JSON, into a buffer; pytest's restored after."""
    loggers = [logging.getLogger(name) for name in ("", "pynetdicom", "aio_pika", "aiormq")]
    before = [(logger.handlers[:], logger.level) for logger in loggers]
    configure_logging("sorter", "DEBUG", "json")
    stream = io.StringIO()
    cast(logging.StreamHandler[io.StringIO], loggers[0].handlers[0]).setStream(stream)
    yield JsonLog(logging.getLogger("dcmdb.test"), stream)
    for logger, (handlers, level) in zip(loggers, before, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture(autouse=True)
def _alone_when_restarting_the_broker(request: pytest.FixtureRequest) -> None:
    """A test that restarts RabbitMQ would break every test running beside it."""
    alongside = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1
    if alongside and request.node.get_closest_marker("restarts_broker"):
        pytest.fail("this test restarts RabbitMQ: run it alone, as scripts/test does")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that share an expensive setup (a module's running dcmdb, a folder's conversion)
    run in one pytest-xdist worker, so that it is made once: scripts/test distributes by
    these groups (``--dist loadgroup``). A module says what its setup is keyed by with
    ``pytest.mark.shared_setup(*parameter_names)``: one group per module and values."""
    for item in items:
        marker = item.get_closest_marker("shared_setup")
        if marker is None:
            continue
        params = getattr(item, "callspec", None)
        values = [str(params.params[n]) for n in marker.args if params and n in params.params]
        group = "-".join([item.module.__name__ if item.module else item.nodeid, *values])
        item.add_marker(pytest.mark.xdist_group(group))

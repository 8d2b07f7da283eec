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
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import psycopg
import pytest

from services.sorter.filing import Filer
from shared.catalog.database import open_catalog
from shared.logs import configure_logging
from tests.arrivals import Sorter
from tests.broker_cluster import RABBITMQ_BIN, Cluster
from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
TESTDATA = REPO.parent / "shared" / "testdata" / "dicom"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBITMQ_MANAGEMENT = "http://127.0.0.1:15672/api"
# The group (``shared_setup(shared_by=...)``) of the tests that use RabbitMQ nodes of the
# session's own (`rabbitmq_node`, `rabbitmq_cluster`): one worker starts them, once.
OWN_RABBITMQ = "tests.conftest.own-rabbitmq"


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
    """A virtual host made and removed through the management plugin's HTTP API
    (scripts/prepare enables it): rabbitmqctl boots an Erlang VM for each call, about a
    second of CPU, for every test."""
    vhost = f"dcmdb-test-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=RABBITMQ_MANAGEMENT, auth=("guest", "guest"), timeout=60) as api:
        try:
            api.put(f"/vhosts/{vhost}").raise_for_status()
        except httpx.ConnectError:
            pytest.fail(f"RabbitMQ's management API does not answer at {RABBITMQ_MANAGEMENT}")
        everything = {"configure": ".*", "write": ".*", "read": ".*"}
        api.put(f"/permissions/{vhost}/guest", json=everything).raise_for_status()
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        api.delete(f"/vhosts/{vhost}")


def queue_drained(broker_url: str, queue: str) -> bool:
    """Whether `queue` of the URL's virtual host holds no message, ready or in a consumer's
    hands, as the management API last counted (it counts every 5 s: ask again after that)."""
    vhost = broker_url.rsplit("/", 1)[1]
    with httpx.Client(base_url=RABBITMQ_MANAGEMENT, auth=("guest", "guest"), timeout=60) as api:
        answer = api.get(f"/queues/{vhost}/{queue}")
    if answer.status_code == 404:
        return False
    answer.raise_for_status()
    counts = answer.json()
    return counts.get("messages") == 0 and counts.get("messages_unacknowledged") == 0


@pytest.fixture(scope="session")
def rabbitmq_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A three-node RabbitMQ cluster of the test session's own (tests/broker_cluster.py),
    started from the installed rabbitmq-server; the machine's node is left alone."""
    if not (RABBITMQ_BIN / "rabbitmq-server").is_file():
        pytest.fail(f"rabbitmq-server is not installed in {RABBITMQ_BIN} (scripts/prepare --test)")
    cluster = Cluster(
        tmp_path_factory.mktemp("rabbitmq-cluster"),
        f"dcmdb-test-{uuid.uuid4().hex[:6]}",
        [(free_port(), free_port()) for _ in range(3)],
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A RabbitMQ node of the test session's own, for the tests that stop and start
    RabbitMQ: the machine's node, which every other test uses, is left running."""
    if not (RABBITMQ_BIN / "rabbitmq-server").is_file():
        pytest.fail(f"rabbitmq-server is not installed in {RABBITMQ_BIN} (scripts/prepare --test)")
    node = Cluster(
        tmp_path_factory.mktemp("rabbitmq-node"),
        f"dcmdb-test-{uuid.uuid4().hex[:6]}",
        [(free_port(), free_port())],
    )
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
def own_broker_url(rabbitmq_node: Cluster) -> Iterator[str]:
    """A fresh virtual host on the session's own RabbitMQ node, running."""
    yield from _vhost_on(rabbitmq_node)


@pytest.fixture
def cluster_urls(rabbitmq_cluster: Cluster) -> Iterator[str]:
    """A fresh virtual host on the whole cluster, every node running: DCMDB_BROKER_URL with
    each node's URL."""
    yield from _vhost_on(rabbitmq_cluster)


def _vhost_on(cluster: Cluster) -> Iterator[str]:
    for node in cluster.nodes:  # one a test before took away and left so
        if node not in cluster.running():
            cluster.restart(node)
    vhost = f"dcmdb-test-{uuid.uuid4().hex[:10]}"
    cluster.add_vhost(vhost)
    yield cluster.urls(vhost)
    cluster.delete_vhost(vhost)


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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that share an expensive setup (a module's running dcmdb, a folder's conversion)
    run in one pytest-xdist worker, so that it is made once: scripts/test distributes by
    these groups (``--dist loadgroup``). A module says what its setup is keyed by with
    ``pytest.mark.shared_setup(*parameter_names)``: one group per module and values. A setup
    of wider scope, used by several modules, is named by ``shared_by``: one group per name
    and values, across the modules."""
    for item in items:
        marker = item.get_closest_marker("shared_setup")
        if marker is None:
            continue
        params = getattr(item, "callspec", None)
        values = [str(params.params[n]) for n in marker.args if params and n in params.params]
        owner = marker.kwargs.get("shared_by") or (
            item.module.__name__ if item.module else item.nodeid
        )
        group = "-".join([owner, *values])
        item.add_marker(pytest.mark.xdist_group(group))

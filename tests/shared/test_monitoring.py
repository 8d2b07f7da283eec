"""The side port (/metrics, /healthz, /readyz) and the side ports `dcmdb up` hands out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import Counter

from services.commands.up import child_environments
from shared.errors import ConfigurationError
from shared.monitoring import OK, SidePort, broker_reachable
from shared.settings import METRICS_PORTS
from tests.support import free_port, refused_port

PROBE = Counter("dcmdb_test_side_port_probes_total", "Counted by the side port's tests")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def side() -> Iterator[SidePort]:
    side = SidePort("tester", "127.0.0.1", free_port())
    side.start()
    yield side
    side.stop()


def test_healthz_answers_while_the_process_runs(side: SidePort) -> None:
    assert get(f"http://127.0.0.1:{side.port}/healthz") == (
        200,
        json.dumps({"status": "ok", "service": "tester"}),
    )
    code, body = get(f"http://127.0.0.1:{side.port}/elsewhere")
    assert code == 404 and "/metrics" in body


def test_readyz_names_each_dependency_until_every_one_answers(side: SidePort) -> None:
    url = f"http://127.0.0.1:{side.port}/readyz"
    broker, catalog = side.dependency("broker"), side.dependency("catalog")
    assert get(url) == (
        503,
        json.dumps({"broker": "not connected yet", "catalog": "not connected yet"}),
    )
    broker.watch(lambda: OK)
    catalog.watch(lambda: "unreachable: OperationalError")
    assert get(url) == (
        503,
        json.dumps({"broker": "ok", "catalog": "unreachable: OperationalError"}),
    )
    catalog.watch(lambda: OK)
    assert get(url) == (200, json.dumps({"broker": "ok", "catalog": "ok"}))


def test_a_dependency_that_hangs_is_reported_not_waited_for(
    side: SidePort, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shared.monitoring.CHECK_TIMEOUT", 0.2)
    released = threading.Event()
    side.dependency("catalog").watch(lambda: OK if released.wait(30) else "never")
    try:
        code, body = get(f"http://127.0.0.1:{side.port}/readyz")
    finally:
        released.set()
    assert code == 503 and "no answer within" in json.loads(body)["catalog"]


def test_metrics_serve_the_registry_after_the_scrape_hooks(side: SidePort) -> None:
    side.before_scrape(lambda: PROBE.inc(2))
    code, body = get(f"http://127.0.0.1:{side.port}/metrics")
    assert code == 200
    assert "dcmdb_test_side_port_probes_total 2.0" in body.splitlines()


def test_a_port_in_use_is_a_configuration_error_naming_the_variable() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match="DCMDB_METRICS_PORT"):
            SidePort("tester", "127.0.0.1", port).start()


def test_port_zero_serves_nothing() -> None:
    side = SidePort("tester", "127.0.0.1", 0)
    side.start()  # nothing to bind, nothing to fail
    side.stop()


def test_a_service_whose_side_port_is_taken_stops_at_start_with_exit_code_2(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
        env |= {
            "DCMDB_DATA_DIR": str(tmp_path / "data"),
            "DCMDB_METRICS_PORT": str(taken.getsockname()[1]),
        }
        result = subprocess.run(
            [sys.executable, "-m", "services.commands.cli", "converter"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert "configuration error: DCMDB_METRICS_PORT" in result.stderr


def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **values: str) -> None:
    for name in list(os.environ):
        if name.startswith("DCMDB_"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout


def test_up_gives_each_service_its_default_side_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_environment(monkeypatch, tmp_path)
    names = ["receiver", "sorter", "converter", "api", "retriever"]
    environments = child_environments(names)
    ports = {name: environments[name].get("DCMDB_METRICS_PORT") for name in names}
    assert ports == {
        "receiver": "9101",
        "sorter": "9102",
        "converter": "9103",
        "api": None,  # its metrics are on its own port
        "retriever": "9104",
    }
    assert METRICS_PORTS["retention"] == 9105
    assert METRICS_PORTS["notifier"] == 9106


def test_up_takes_ports_per_service_or_none_at_all(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_environment(monkeypatch, tmp_path, DCMDB_METRICS_PORTS="sorter:19102, receiver:19101")
    environments = child_environments(["receiver", "sorter", "converter"])
    assert [environments[n]["DCMDB_METRICS_PORT"] for n in ("receiver", "sorter", "converter")] == [
        "19101",
        "19102",
        "9103",
    ]
    clean_environment(monkeypatch, tmp_path, DCMDB_METRICS_PORT="0")
    environments = child_environments(["receiver", "sorter"])
    assert {environments[n]["DCMDB_METRICS_PORT"] for n in ("receiver", "sorter")} == {"0"}


@pytest.mark.parametrize("value", ["sorter=19102", "mailer:25", "sorter:99999", "sorter:"])
def test_up_refuses_a_malformed_port_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    clean_environment(monkeypatch, tmp_path, DCMDB_METRICS_PORTS=value)
    with pytest.raises(ConfigurationError, match="DCMDB_METRICS_PORTS"):
        child_environments(["sorter"])


def test_the_broker_is_reachable_when_one_of_its_nodes_answers(broker_url: str) -> None:
    with refused_port() as down:
        gone = f"amqp://guest:guest@127.0.0.1:{down}/"
        assert broker_reachable(f"{gone},{broker_url}") == OK
        assert broker_reachable(gone).startswith("unreachable")

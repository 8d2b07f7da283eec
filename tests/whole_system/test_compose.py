"""The deployment files, proved without a Docker engine (there is none on this machine).

`docker-compose config` parses, interpolates and validates the compose files as Docker
would; the dcmdb services' commands and variables are checked against the CLI and the
settings; each service is then started on this host with the compose file's own
environment (compose host names mapped to 127.0.0.1, data under a temporary folder, the
test's own broker vhost, database and free ports) and must pass its compose health check,
be ready, and carry a study from the receiver to the API. Prometheus's configuration goes
through promtool, Grafana's provisioning must point at what compose mounts.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.api.settings import ApiSettings
from services.commands.cli import SERVICES, TOOLS
from services.commands.up import UpSettings
from shared.settings import ENV_PREFIX, METRICS_PORTS, CommonSettings
from tests.conftest import REPO, require_tool
from tests.support import free_port, wait_for
from tests.system import dicom_files, send_dicom

COMPOSE = REPO / "docker-compose.yml"
SAMBA = REPO / "docker-compose.samba.yml"
DCMDB_IMAGE = "dcmdb:latest"
# The sub-commands the compose file runs, one service each.
DCMDB_SERVICES = {"receiver", "sorter", "converter", "retriever", "retention", "notifier", "api"}
# Services whose sub-command is merged separately: the file may name them before the CLI
# knows them; the host run below covers each one the CLI knows.
NOT_YET_IN_THE_CLI: set[str] = set()
OTHER_SERVICES = {"rabbitmq", "postgres", "prometheus", "grafana"}
# What the test fills into a copy of .env.example.
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret-for-the-test",
    "RABBITMQ_PASSWORD": "mq-secret-for-the-test",
    "GRAFANA_ADMIN_PASSWORD": "grafana-secret-for-the-test",
    "DCMDB_API_KEYS": "compose-test-admin-key-0123456789:admin",
}


def cli_commands() -> set[str]:
    return set(SERVICES) | set(TOOLS) | {"up"}


def known_variables() -> set[str]:
    """Every DCMDB_ variable a settings class of a service the CLI knows reads."""
    for name in SERVICES:
        importlib.import_module(f"services.{name}.settings")
    classes: set[type[BaseSettings]] = {UpSettings, ApiSettings}
    pending = [CommonSettings]
    while pending:
        cls = pending.pop()
        classes.add(cls)
        pending.extend(cls.__subclasses__())
    return {ENV_PREFIX + field.upper() for cls in classes for field in cls.model_fields}


def env_file(tmp_path: Path) -> Path:
    """.env.example with the secrets filled in, as the README tells the admin to do."""
    lines = []
    for line in (REPO / ".env.example").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and name in SECRETS:
            assert value == "", f".env.example gives {name} a value: it must be empty"
            line = f"{name}={SECRETS[name]}"
        lines.append(line)
    path = tmp_path / "compose.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def docker_compose(env: Path, *files: Path, args: tuple[str, ...] = ("config",)) -> str:
    command = [require_tool("docker-compose"), "--env-file", str(env)]
    for file in files or (COMPOSE,):
        command += ["-f", str(file)]
    result = subprocess.run(
        [*command, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as Docker sees it: parsed, merged, interpolated and validated."""
    env = env_file(tmp_path_factory.mktemp("compose"))
    return yaml.safe_load(docker_compose(env))  # type: ignore[no-any-return]


def dcmdb_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in config["services"].items() if s.get("image") == DCMDB_IMAGE}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def named(self) -> bool:
        return not self.source.startswith(("/", "."))


def mounts(service: dict[str, Any]) -> list[Mount]:
    """A service's volumes, from the short syntax docker-compose 1 prints or the long one."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append(Mount(volume["source"], volume["target"], volume.get("read_only", False)))
        else:
            source, target, *mode = volume.split(":")
            found.append(Mount(source, target, "ro" in "".join(mode).split(",")))
    return found


def container_ports(service: dict[str, Any]) -> list[int]:
    return [
        int(port["target"]) if isinstance(port, dict) else int(port.split("/")[0].split(":")[-1])
        for port in service.get("ports", [])
    ]


def test_compose_runs_every_service_and_dcmdb_from_one_image(config: dict[str, Any]) -> None:
    assert set(config["services"]) == DCMDB_SERVICES | OTHER_SERVICES
    services = dcmdb_services(config)
    assert set(services) == DCMDB_SERVICES
    for name, service in services.items():
        assert service["build"]["context"] == str(REPO), name
        assert service["command"] == [name], "one sub-command per service, named after it"


def test_every_dcmdb_service_runs_a_real_sub_command(config: dict[str, Any]) -> None:
    commands = {service["command"][0] for service in dcmdb_services(config).values()}
    unknown = commands - cli_commands()
    assert unknown <= NOT_YET_IN_THE_CLI, f"not dcmdb sub-commands: {unknown}"


def test_every_dcmdb_variable_is_a_known_setting(config: dict[str, Any]) -> None:
    known = known_variables()
    for name, service in config["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith(ENV_PREFIX):
                assert variable in known, f"{name}: {variable} is not a setting"


def test_every_service_is_healthy_before_its_dependents_start_and_restarts(
    config: dict[str, Any],
) -> None:
    for name, service in config["services"].items():
        assert service["healthcheck"]["test"], f"{name} has no health check"
        assert service["restart"] == "unless-stopped", name
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] == "service_healthy", f"{name} -> {dependency}"
    for name in DCMDB_SERVICES:
        assert set(config["services"][name]["depends_on"]) == {"rabbitmq", "postgres"}
    assert set(config["services"]["grafana"]["depends_on"]) == {"prometheus"}


def test_data_lives_in_named_volumes(config: dict[str, Any]) -> None:
    named = set(config["volumes"])
    assert named == {"dcmdb-data", "rabbitmq-data", "postgres-data", "prometheus-data",
                     "grafana-data"}  # fmt: skip
    for name, service in config["services"].items():
        for mount in mounts(service):
            if mount.named:
                assert mount.source in named, name
            else:  # configuration from the checkout, never data
                assert mount.read_only, (name, mount)
                assert Path(mount.source).is_relative_to(REPO / "deploy"), (name, mount)
    for name in DCMDB_SERVICES:
        [mount] = mounts(config["services"][name])
        assert (mount.source, mount.target, mount.read_only) == ("dcmdb-data", "/data", False)
        assert config["services"][name]["environment"]["DCMDB_DATA_DIR"] == "/data"


def test_no_secret_is_written_in_the_files_and_every_variable_is_in_env_example(
    tmp_path: Path,
) -> None:
    example = {
        line.partition("=")[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    for file in (COMPOSE, SAMBA):
        text = file.read_text()
        assert not re.search(r"(PASSWORD|PASS|_KEYS):\s+[^$\s]", text), f"{file.name}: a secret"
        interpolated = set(re.findall(r"\$\{([A-Z_]+)", text))
        assert interpolated <= example, f"missing in .env.example: {interpolated - example}"
    # Each secret left empty stops compose, which says which one is missing.
    for secret in SECRETS:
        env = env_file(tmp_path)
        env.write_text(env.read_text().replace(f"{secret}={SECRETS[secret]}", f"{secret}="))
        result = subprocess.run(
            [require_tool("docker-compose"), "--env-file", str(env),
             "-f", str(COMPOSE), "-f", str(SAMBA), "config", "-q"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode != 0 and f"set {secret} in .env" in result.stderr, secret


def test_the_image_runs_as_a_user_with_the_locked_dependencies() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "uv sync --locked --no-dev" in dockerfile
    assert re.search(r"^ENTRYPOINT \[\"dcmdb\"\]", dockerfile, re.MULTILINE)


def test_the_samba_share_is_read_only_and_each_user_reads_as_themself(tmp_path: Path) -> None:
    """dperson/samba's environment: SHARE is name;path;browsable;read-only;guest[;users...],
    GLOBALn an smb.conf [global] option (an empty value unsets the image's own), USERn an
    account of the image's own making (one group only), PERMISSIONS hands every share's
    files to one account. Who reads what is the host's users and groups, by the lab folders'
    Unix groups (tests/shared/test_share.py)."""
    config = yaml.safe_load(docker_compose(env_file(tmp_path), COMPOSE, SAMBA))
    samba = config["services"]["samba"]
    assert set(mounts(samba)) == {
        Mount("dcmdb-data", "/data", read_only=True),
        Mount("/etc/passwd", "/etc/passwd", read_only=True),
        Mount("/etc/group", "/etc/group", read_only=True),
        Mount("samba-state", "/var/lib/samba", read_only=False),  # Samba's passwords
    }
    environment = samba["environment"]
    name, path, _browse, read_only, guest, *users = environment["SHARE"].split(";")
    assert (name, path, read_only, guest) == ("archive", "/data/archive", "yes", "no")
    assert users in ([], [""], ["all"])  # every account; the lab folders' modes decide
    options = dict(
        (part.strip() for part in value.partition("=")[::2])
        for variable, value in environment.items()
        if variable.startswith("GLOBAL")
    )
    assert options["force user"] == options["force group"] == ""
    assert options["hide unreadable"] == "yes"
    assert not [v for v in environment if v.startswith("USER") or v == "PERMISSIONS"]
    # The sorter (and dcmdb share run as the sorter) find the lab groups by the host's names.
    assert Mount("/etc/group", "/etc/group", read_only=True) in mounts(config["services"]["sorter"])


def health_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    [url] = re.findall(r"http://[^'\"]+", " ".join(test))
    return url


def test_health_checks_and_prometheus_reach_each_service_on_its_port(
    config: dict[str, Any], tmp_path: Path
) -> None:
    targets = {}
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, _, port = target.partition(":")
                targets[host] = int(port)
                assert static["labels"]["service"] == host
    ports = {name: METRICS_PORTS[name] for name in DCMDB_SERVICES - {"api"}}
    ports["api"] = ApiSettings.model_fields["api_port"].default
    assert targets == ports, "Prometheus scrapes each dcmdb service on its port"
    for name, port in ports.items():
        url = urlsplit(health_url(config["services"][name]))
        assert (url.port, url.path) == (port, "/healthz"), name
    assert config["services"]["receiver"]["environment"]["DCMDB_METRICS_HOST"] == "0.0.0.0"
    configuration = REPO / "deploy/prometheus/prometheus.yml"
    assert Mount(str(configuration), "/etc/prometheus/prometheus.yml", True) in mounts(
        config["services"]["prometheus"]
    )
    # The API's /metrics wants an admin key, which Prometheus reads from a file compose mounts.
    [api_job] = [job for job in prometheus["scrape_configs"] if job["job_name"] == "dcmdb-api"]
    key_file = api_job["authorization"]["credentials_file"]
    assert Mount(str(REPO / "deploy/prometheus/api-key"), key_file, True) in mounts(
        config["services"]["prometheus"]
    )
    (tmp_path / "api-key").write_text("dcmdb_an-admin-key\n")  # promtool wants the file there
    checked_copy = tmp_path / "prometheus.yml"
    checked_copy.write_text(configuration.read_text().replace(key_file, str(tmp_path / "api-key")))
    checked = subprocess.run(
        [require_tool("promtool"), "check", "config", str(checked_copy)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dicom_port = CommonSettings.model_fields["dicom_port"].default
    assert container_ports(config["services"]["receiver"]) == [dicom_port]
    assert container_ports(config["services"]["api"]) == [ports["api"]]


def test_grafana_provisions_the_prometheus_source_and_the_dashboard(
    config: dict[str, Any], tmp_path: Path
) -> None:
    grafana = config["services"]["grafana"]
    from_checkout = {m.target: Path(m.source) for m in mounts(grafana) if not m.named}
    provisioning = from_checkout["/etc/grafana/provisioning"]
    [source] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    [provider] = yaml.safe_load((provisioning / "dashboards/dcmdb.yml").read_text())["providers"]
    dashboards = from_checkout[provider["options"]["path"]]
    dashboard = json.loads((dashboards / "dcmdb.json").read_text())
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == (
        f"{provider['options']['path']}/dcmdb.json"
    )
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert {p["datasource"]["uid"] for p in panels} == {source["uid"]}
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("received", "backlog", "conversion", "failures", "dead letters", "disk free"):
        assert topic in titles, f"the dashboard has no {topic} panel"
    # Every query is PromQL Prometheus accepts: promtool checks them as recording rules.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel{p['id']}_{t['refId']}", "expr": promql(t["expr"])}
                    for p in panels
                    for t in p["targets"]
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def promql(expression: str) -> str:
    """A dashboard query as Prometheus gets it: Grafana fills in its interval variables."""
    return expression.replace("$__rate_interval", "1m").replace("$__interval", "1m")


# -- the compose services, started on this host -------------------------------------------


def host_value(value: str, services: set[str]) -> str:
    """A compose environment value as it must read on this host: compose host names, alone
    or in a URL, are 127.0.0.1 here."""
    if value in services:
        return "127.0.0.1"
    url = urlsplit(value)
    if url.scheme and url.hostname in services:
        return url._replace(netloc=url.netloc.replace(f"@{url.hostname}:", "@127.0.0.1:")).geturl()
    return value


@pytest.fixture
def on_host(
    config: dict[str, Any], tmp_path: Path, broker_url: str, postgres_url: str
) -> Iterator[dict[str, Any]]:
    """Each dcmdb service of the compose file whose command the CLI knows, running here."""
    services = dcmdb_services(config)
    runnable = {name for name, s in services.items() if s["command"][0] in SERVICES}
    expected = DCMDB_SERVICES - (NOT_YET_IN_THE_CLI - set(SERVICES))
    assert runnable == expected, "the host run covers every service the CLI knows"
    ports = {"dicom": free_port(), "api": free_port()}
    side_ports = {name: free_port() for name in runnable - {"api"}}
    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    processes = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        for name in sorted(runnable):
            env = dict(base)
            for variable, value in services[name]["environment"].items():
                env[variable] = host_value(str(value), set(config["services"]))
            env.update(host_connections(env, tmp_path, broker_url, postgres_url))
            env["DCMDB_DICOM_PORT"], env["DCMDB_API_PORT"] = str(ports["dicom"]), str(ports["api"])
            if name in side_ports:
                env["DCMDB_METRICS_PORT"] = str(side_ports[name])
            with open(logs / f"{name}.log", "wb") as log:
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "services.commands.cli", *services[name]["command"]],
                    cwd=tmp_path,  # no .env of the checkout
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        yield {"services": services, "ports": ports, "side_ports": side_ports, "logs": logs,
               "processes": processes}  # fmt: skip
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()


def host_connections(
    env: dict[str, str], tmp_path: Path, broker_url: str, postgres_url: str
) -> dict[str, str]:
    """The data folder, broker and catalog of this test, once the compose values are checked
    to name the compose services on their ports."""
    broker, catalog = urlsplit(env["DCMDB_BROKER_URL"]), urlsplit(env["DCMDB_DATABASE_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("amqp", "127.0.0.1", 5672)
    assert (broker.username, broker.password) == ("dcmdb", SECRETS["RABBITMQ_PASSWORD"])
    assert (catalog.scheme, catalog.hostname, catalog.port) == ("postgresql", "127.0.0.1", 5432)
    assert (catalog.username, catalog.password) == ("dcmdb", SECRETS["POSTGRES_PASSWORD"])
    assert env["DCMDB_DATA_DIR"] == "/data"
    return {
        "DCMDB_DATA_DIR": str(tmp_path / "data"),
        "DCMDB_BROKER_URL": broker_url,
        "DCMDB_DATABASE_URL": postgres_url,
    }


def answers(url: str, key: str | None = None) -> bool:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.mark.e2e
def test_the_compose_services_run_on_this_host_and_carry_a_study(
    on_host: dict[str, Any], testdata: Path
) -> None:
    services, side_ports, ports = on_host["services"], on_host["side_ports"], on_host["ports"]

    def service_port(name: str) -> int:
        return ports["api"] if name == "api" else side_ports[name]

    for name in sorted(on_host["processes"]):
        # The compose health check itself, on this host's port.
        test = services[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"], name
        command = [sys.executable, *test[2:]]
        command[-1] = command[-1].replace(
            str(urlsplit(health_url(services[name])).port), str(service_port(name))
        )
        wait_for(
            lambda command=command: subprocess.run(command, capture_output=True).returncode == 0,
            120,
            f"the health check of {name}",
        )
        wait_for(
            lambda name=name: answers(f"http://127.0.0.1:{service_port(name)}/readyz"),
            120,
            f"{name} to be ready",
        )
    for name, process in on_host["processes"].items():
        assert process.poll() is None, (on_host["logs"] / f"{name}.log").read_text()[-3000:]

    files = dicom_files(testdata / "ge_fmri_epi_4d")
    send_dicom(ports["dicom"], files)
    key = SECRETS["DCMDB_API_KEYS"].rpartition(":")[0]
    studies = f"http://127.0.0.1:{ports['api']}/studies"
    wait_for(lambda: listed_instances(studies, key) == len(files), 120, "the study in the API")
    assert not answers(studies), "the compose API asks for a key"


def listed_instances(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return sum(study["instance_count"] for study in json.load(answer)["items"])
    except OSError:
        return -1

"""docker-compose.yml can't be started here (no Docker engine), so check what it says."""

from __future__ import annotations

import re

import yaml

from services.api.settings import ApiSettings
from services.cli import SERVICES
from services.converter.settings import ConverterSettings
from services.receiver.settings import ReceiverSettings
from services.retention.settings import RetentionSettings
from services.retriever.settings import RetrieverSettings
from services.sorter.settings import SorterSettings
from shared.settings import ENV_PREFIX
from tests.conftest import REPO

KNOWN_VARIABLES = {
    ENV_PREFIX + name.upper()
    for settings in (
        ReceiverSettings,
        SorterSettings,
        ConverterSettings,
        ApiSettings,
        RetrieverSettings,
        RetentionSettings,
    )
    for name in settings.model_fields
}


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_every_dcmdb_service_runs_a_real_sub_command() -> None:
    services = compose()["services"]
    commands = {
        name: s["command"][0] for name, s in services.items() if s.get("image") == "dcmdb:latest"
    }
    assert set(commands.values()) == set(SERVICES), commands


def test_every_dcmdb_variable_is_a_known_setting() -> None:
    for name, service in compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith(ENV_PREFIX):
                assert variable in KNOWN_VARIABLES, f"{name}: {variable} is not a setting"


def test_services_wait_for_healthy_dependencies_and_hold_no_secrets() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    assert not re.search(r"(PASSWORD|PASS):\s+[^$\s]", text), "a password is written in the file"
    for name, service in compose()["services"].items():
        assert "healthcheck" in service or name in ("sorter", "converter", "retriever"), name
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy"

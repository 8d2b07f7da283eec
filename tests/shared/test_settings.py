"""Settings: a bad value stops a service at start with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.receiver.settings import ReceiverSettings
from shared.errors import ConfigurationError
from shared.settings import CommonSettings, broker_addresses, load_settings
from tests.conftest import REPO
from tests.support import refused_port, wait_for


def run_service(command: str, env: dict[str, str], tmp_path: Path, seconds: float = 20):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", command],
        cwd=tmp_path,  # no .env of the project's
        env={**clean, "PYTHONPATH": str(REPO), "DCMDB_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=seconds,
    )


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("receiver", "DCMDB_DICOM_PORT", "eleven"),
        ("receiver", "DCMDB_DICOM_PORT", "70000"),
        ("receiver", "DCMDB_AE_TITLE", "A_TITLE_LONGER_THAN_16"),
        ("receiver", "DCMDB_LOG_LEVEL", "LOUD"),
        ("sorter", "DCMDB_BROKER_URL", "http://127.0.0.1:5672/"),
        ("sorter", "DCMDB_PHYSICIAN_ALIASES", "/nonexistent/aliases.yaml"),
        ("receiver", "DCMDB_TLS_CERT", "/nonexistent/cert.pem"),  # and no key
        ("receiver", "DCMDB_TLS_CLIENT_CA", "/nonexistent/ca.pem"),  # and no certificate
        ("receiver", "DCMDB_MAX_ASSOCIATIONS_PER_HOST", "0"),
        ("retriever", "DCMDB_PACS_TLS_KEY", "/nonexistent/key.pem"),  # and no certificate
        ("receiver", "DCMDB_INCOMING_FOLDER", "../elsewhere"),
        ("receiver", "DCMDB_INCOMING_FOLDER", "archive"),
        ("up", "DCMDB_LOG_FORMAT", "xml"),
        ("retention", "DCMDB_RETENTION_LOW_FREE", "a lot"),
        ("retention", "DCMDB_RETENTION_INTERVAL", "0"),
        ("receiver", "DCMDB_MIN_FREE", "-1GB"),
        ("notifier", "DCMDB_WEBHOOK_RETRY_MAX", "1"),  # below the minimum's 10
        ("notifier", "DCMDB_WEBHOOK_TIMEOUT", "0"),
        ("notifier", "DCMDB_WEBHOOK_LINK_BASE", "dcmdb.example.org"),
    ],
)
def test_a_bad_value_stops_the_service_with_one_line(
    command: str, variable: str, value: str, tmp_path: Path
) -> None:
    result = run_service(command, {variable: value}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and "Traceback" not in result.stderr


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCMDB_ALLOWED_CALLING_AES", " PACS ,SCANNER1,,")
    monkeypatch.setenv("DCMDB_ALLOWED_HOSTS", "10.0.0.5")
    settings = load_settings(ReceiverSettings)
    assert settings.allowed_calling_aes == ("PACS", "SCANNER1")
    assert settings.allowed_hosts == ("10.0.0.5",)


def test_the_broker_url_may_name_several_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = "amqp://u:p@rabbit-a:5672/dcmdb, amqps://u:p@rabbit-b:5671/dcmdb"
    monkeypatch.setenv("DCMDB_BROKER_URL", nodes)
    assert broker_addresses(load_settings(CommonSettings).broker_url) == [
        "amqp://u:p@rabbit-a:5672/dcmdb",
        "amqps://u:p@rabbit-b:5671/dcmdb",
    ]
    monkeypatch.setenv("DCMDB_BROKER_URL", "amqp://rabbit-a/dcmdb,http://rabbit-b/")
    with pytest.raises(ConfigurationError, match="DCMDB_BROKER_URL"):
        load_settings(CommonSettings)


def test_paths_derive_from_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCMDB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DCMDB_ARCHIVE_DIR", raising=False)
    monkeypatch.delenv("DCMDB_DATABASE_URL", raising=False)
    settings = load_settings(CommonSettings)
    assert settings.archive_root == tmp_path / "archive"
    assert settings.incoming_dir == tmp_path / "incoming"
    assert settings.catalog_url == f"sqlite:///{tmp_path / 'catalog.sqlite'}"


def test_load_settings_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCMDB_DICOM_PORT", "0")
    monkeypatch.setenv("DCMDB_SWEEP_INTERVAL", "-1")
    with pytest.raises(ConfigurationError) as error:
        load_settings(ReceiverSettings)
    assert "DCMDB_DICOM_PORT" in str(error.value) and "DCMDB_SWEEP_INTERVAL" in str(error.value)


def _retry_lines(command: str, env: dict[str, str], tmp_path: Path, marker: str) -> list[str]:
    """Run a service until it has logged ``marker`` twice; it must still be running then."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    log = tmp_path / "service.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.commands.cli", command],
            cwd=tmp_path,
            # No side port: two of these tests running at once would both take the default.
            env={
                **clean,
                "PYTHONPATH": str(REPO),
                "DCMDB_DATA_DIR": str(tmp_path),
                "DCMDB_METRICS_PORT": "0",
                **env,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            # Generous: a service takes seconds to start when four test workers share two cores.
            def retried_twice() -> bool:
                assert process.poll() is None, (
                    f"{command} died instead of retrying:\n{log.read_text()}"
                )
                return log.read_text().count(marker) >= 2

            wait_for(retried_twice, 90, f"two '{marker}' lines")
        finally:
            process.terminate()
            process.wait(30)
    text = log.read_text()
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if marker in line]


@pytest.mark.integration
def test_an_unreachable_broker_gives_clear_lines_and_retries(tmp_path: Path) -> None:
    with refused_port() as port:
        url = f"amqp://guest:s3cret@127.0.0.1:{port}/"
        warnings = _retry_lines("sorter", {"DCMDB_BROKER_URL": url}, tmp_path, "RabbitMQ at")
    assert "not reachable" in warnings[0]
    assert "s3cret" not in (tmp_path / "service.log").read_text()


@pytest.mark.integration
def test_an_unreachable_database_gives_clear_lines_and_retries(tmp_path: Path) -> None:
    with refused_port() as port:
        url = f"postgresql://postgres@127.0.0.1:{port}/catalog"
        warnings = _retry_lines("sorter", {"DCMDB_DATABASE_URL": url}, tmp_path, "catalog database")
    assert "not reachable" in warnings[0]


def test_empty_tls_variables_mean_plain_dicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a .env copied from .env.example leaves them."""
    from services.retriever.settings import RetrieverSettings

    for name in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "PACS_TLS_CA", "PACS_TLS_CERT"):
        monkeypatch.setenv(f"DCMDB_{name}", "")
    settings = RetrieverSettings()
    assert settings.tls_cert is None and settings.pacs_tls_ca is None
    assert settings.own_receiver_tls() is None

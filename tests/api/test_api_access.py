"""Keys, scopes and readiness, in process: the API application itself on a real catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from services.api.access import admin, reader
from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.errors import ConfigurationError
from shared.keys import KeyRing, Scope
from shared.settings import load_settings
from tests.support import free_port

READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


@pytest.fixture
def scoped(tmp_path: Path) -> TestClient:
    """Two routes, one per scope, guarded as the API guards its own."""
    app = FastAPI()
    app.state.keys = KeyRing(tmp_path / "keys.yaml", {READ_KEY: Scope.READ, ADMIN_KEY: Scope.ADMIN})
    app.state.open_without_keys = True

    @app.get("/look", dependencies=[Depends(reader)])
    def look() -> dict[str, str]:
        return {"ok": "read"}

    @app.post("/change", dependencies=[Depends(admin)])
    def change() -> dict[str, str]:
        return {"ok": "admin"}

    @app.get("/find", dependencies=[Depends(reader)])
    def find(modality: str | None = None) -> dict[str, str | None]:
        return {"modality": modality}

    return TestClient(app)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("headers", "look", "change"),
    [
        ({}, 401, 401),
        (_bearer("not-a-key-0123456789abcdef"), 401, 401),
        (_bearer(READ_KEY[:-1]), 401, 401),
        (_bearer(READ_KEY), 200, 403),
        (_bearer(ADMIN_KEY), 200, 200),
    ],
)
def test_the_scope_matrix(
    scoped: TestClient, headers: dict[str, str], look: int, change: int
) -> None:
    assert scoped.get("/look", headers=headers).status_code == look
    answer = scoped.post("/change", headers=headers)
    assert answer.status_code == change
    if change == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    if change == 403:
        assert "admin" in answer.json()["detail"]


def test_unknown_parameters_are_refused_after_the_key(scoped: TestClient) -> None:
    assert scoped.get("/look?colour=red").status_code == 401
    answer = scoped.get("/look?colour=red", headers=_bearer(READ_KEY))
    assert answer.status_code == 422
    assert "colour" in answer.text


def test_a_parameter_given_twice_is_refused(scoped: TestClient) -> None:
    """FastAPI would keep the last value: a listing of CT for someone who asked for MR too."""
    assert scoped.get("/find?modality=MR", headers=_bearer(READ_KEY)).json() == {"modality": "MR"}
    answer = scoped.get("/find?modality=MR&modality=CT", headers=_bearer(READ_KEY))
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "modality"]
    assert "more than once" in answer.text


def test_keys_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{READ_KEY}:read\n{ADMIN_KEY}:admin\n")
    monkeypatch.setenv("DCMDB_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("DCMDB_API_HOST", "0.0.0.0")
    monkeypatch.setenv("DCMDB_DATA_DIR", str(tmp_path))
    settings = load_settings(ApiSettings)
    assert settings.keys == {READ_KEY: "read", ADMIN_KEY: "admin"}
    keys.write_text(f"{READ_KEY}:write\n")
    with pytest.raises(ConfigurationError, match="DCMDB_API_KEYS") as failure:
        load_settings(ApiSettings)
    assert READ_KEY not in str(failure.value)


@pytest.fixture
def app_with_broker_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("DCMDB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DCMDB_BROKER_URL", f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    with TestClient(create_app(load_settings(ApiSettings))) as client:
        yield client


def test_readiness_says_what_is_away(app_with_broker_away: TestClient) -> None:
    assert app_with_broker_away.get("/healthz").status_code == 200
    answer = app_with_broker_away.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["catalog"] == "ok"
    assert body["broker"].startswith("unreachable")


def test_readiness_with_everything_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str
) -> None:
    monkeypatch.setenv("DCMDB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DCMDB_BROKER_URL", broker_url)
    with TestClient(create_app(load_settings(ApiSettings))) as client:
        answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"catalog": "ok", "broker": "ok"}

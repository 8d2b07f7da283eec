"""The webhook routes, in process on a real catalog (SQLite and PostgreSQL): admin only,
the secret shown once, bad input a 422 and an unknown id a 404, and the delivery log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.notifier.catalog import Catalog
from services.notifier.recognition import Recognised, enqueue
from shared.catalog.states import WebhookEvent
from shared.catalog.webhooks import Webhook, WebhookDelivery

pytestmark = pytest.mark.integration

ADMIN_KEY = "webhooks-admin-key-0123456789abcdef"
READ_KEY = "webhooks-read-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
READ = {"Authorization": f"Bearer {READ_KEY}"}
GOOD = {
    "lab": "SMITH_JOHN",
    "url": "https://lab.example.org/hooks/dcmdb",
    "events": ["study.ready", "series.failed"],
}


@pytest.fixture
def api(catalog_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = ApiSettings(
        data_dir=tmp_path,
        database_url=catalog_url,
        api_keys=f"{ADMIN_KEY}:admin,{READ_KEY}:read",  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as client:
        yield client


def register(api: TestClient, **changes: Any) -> dict[str, Any]:
    answer = api.post("/webhooks", json=GOOD | changes, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_register_shows_the_secret_once_and_lists_without_it(api: TestClient) -> None:
    created = register(api)
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert created["lab"] == "SMITH_JOHN" and created["include_patient"] is False
    assert created["events"] == ["series.failed", "study.ready"]
    assert created["created_by"] == "DCMDB_API_KEYS #1"
    other = register(
        api, lab="DOE_JANE", events=["retrieval.finished", "retrieval.finished"],
        include_patient=True,
    )  # fmt: skip
    assert other["events"] == ["retrieval.finished"] and other["include_patient"] is True
    assert other["secret"] != created["secret"]
    listed = api.get("/webhooks", headers=ADMIN)
    assert listed.status_code == 200
    assert [hook["id"] for hook in listed.json()] == [created["id"], other["id"]]
    one = api.get(f"/webhooks/{created['id']}", headers=ADMIN)
    assert one.status_code == 200
    assert one.json() == {k: v for k, v in created.items() if k != "secret"}
    assert "secret" not in listed.text and created["secret"] not in one.text


def test_delete_removes_the_webhook_and_its_log(api: TestClient, catalog_url: str) -> None:
    created = register(api)
    catalog = Catalog.open(catalog_url)
    try:
        with catalog.writer.begin() as session:
            hook = session.get(Webhook, created["id"])
            assert hook is not None
            event = Recognised(WebhookEvent.STUDY_READY, "k", "study/1", datetime.now(UTC), "1.2")
            assert enqueue(session, [hook], event, lambda _: {}) == 1
        answer = api.delete(f"/webhooks/{created['id']}", headers=ADMIN)
        assert answer.status_code == 204 and answer.content == b""
        with catalog.reader() as session:
            assert session.scalars(select(WebhookDelivery)).all() == []
    finally:
        catalog.dispose()
    for method, path in (
        ("GET", f"/webhooks/{created['id']}"),
        ("DELETE", f"/webhooks/{created['id']}"),
        ("GET", f"/webhooks/{created['id']}/deliveries"),
    ):
        gone = api.request(method, path, headers=ADMIN)
        assert gone.status_code == 404, (method, path)
        assert gone.json()["detail"] == f"no webhook {created['id']}"


def test_the_delivery_log_says_how_each_went(api: TestClient, catalog_url: str) -> None:
    created = register(api)
    assert api.get(f"/webhooks/{created['id']}/deliveries", headers=ADMIN).json() == []
    catalog = Catalog.open(catalog_url)
    try:
        with catalog.writer.begin() as session:
            hook = session.get(Webhook, created["id"])
            assert hook is not None
            for key in ("first", "second"):
                event = Recognised(
                    WebhookEvent.STUDY_READY, key, "study/1.2", datetime.now(UTC), "1.2"
                )
                enqueue(session, [hook], event, lambda _: {})
            first = session.scalar(
                select(WebhookDelivery).where(WebhookDelivery.event_key == "first")
            )
            assert first is not None
            first.state, first.attempts, first.last_status = "delivered", 3, 200  # type: ignore[assignment]
            first.delivered_at = datetime.now(UTC)
            first.last_error = ""
    finally:
        catalog.dispose()
    log = api.get(f"/webhooks/{created['id']}/deliveries", headers=ADMIN)
    assert log.status_code == 200
    newest, oldest = log.json()
    assert (oldest["state"], oldest["attempts"], oldest["last_status"]) == ("delivered", 3, 200)
    assert oldest["delivered_at"] is not None and oldest["next_attempt_at"] is None
    assert newest["state"] == "pending" and newest["attempts"] == 0
    assert newest["next_attempt_at"] is not None and newest["delivered_at"] is None
    assert newest["study_uid"] == "1.2" and newest["event"] == "study.ready"
    pending = api.get(f"/webhooks/{created['id']}/deliveries?state=pending", headers=ADMIN)
    assert [d["delivery_id"] for d in pending.json()] == [newest["delivery_id"]]
    limited = api.get(f"/webhooks/{created['id']}/deliveries?limit=1", headers=ADMIN)
    assert [d["delivery_id"] for d in limited.json()] == [newest["delivery_id"]]


ROUTES = [
    ("POST", "/webhooks", GOOD),
    ("GET", "/webhooks", None),
    ("GET", "/webhooks/1", None),
    ("DELETE", "/webhooks/1", None),
    ("GET", "/webhooks/1/deliveries", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_only_an_admin_key_reaches_the_webhooks(
    api: TestClient, method: str, path: str, body: dict[str, Any] | None
) -> None:
    register(api)
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer not-a-key-0123456789abcdef"}, 401),
        (READ, 403),
    ):
        answer = api.request(method, path, json=body, headers=headers)
        assert answer.status_code == status, (headers, answer.text)
        assert "whsec_" not in answer.text and "lab.example.org" not in answer.text
    assert api.request(method, path, json=body, headers=ADMIN).status_code < 300


@pytest.mark.parametrize(
    "change",
    [
        {"lab": ""},
        {"lab": "../etc"},
        {"lab": "SMITH JOHN"},
        {"url": "ftp://lab.example.org/"},
        {"url": "not a url"},
        {"url": "http://"},
        {"url": "https://lab.example.org/" + "x" * 3000},
        {"events": []},
        {"events": ["study.deleted"]},
        {"events": "study.ready"},
        {"include_patient": "yes"},
        {"include_patient": 1},
        {"colour": "red"},
    ],
)
def test_bad_input_is_a_422(api: TestClient, change: dict[str, Any]) -> None:
    answer = api.post("/webhooks", json=GOOD | change, headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert api.get("/webhooks", headers=ADMIN).json() == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/webhooks/999", 404),
        ("DELETE", "/webhooks/999", 404),
        ("GET", "/webhooks/999/deliveries", 404),
        ("GET", "/webhooks/0", 422),
        ("GET", "/webhooks/abc", 422),
        ("GET", "/webhooks/99999999999", 422),
        ("GET", "/webhooks/1/deliveries?limit=0", 422),
        ("GET", "/webhooks/1/deliveries?state=lost", 422),
        ("GET", "/webhooks?colour=red", 422),
        ("POST", "/webhooks/1", 405),
    ],
)
def test_unknown_ids_and_bad_parameters(
    api: TestClient, method: str, path: str, status: int
) -> None:
    register(api)
    answer = api.request(method, path, headers=ADMIN)
    assert answer.status_code == status, answer.text


def test_a_body_that_is_not_json_is_refused(api: TestClient) -> None:
    answer = api.post(
        "/webhooks", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert answer.status_code == 422

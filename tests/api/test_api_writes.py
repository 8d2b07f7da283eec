"""The routes that write to the catalog, while other services write to it too: each
answers as documented, never "database is locked" (on SQLite a read that turns into a
write fails at once when another process committed in between)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared import retrievals
from shared.catalog.database import open_catalog
from shared.catalog.models import RetrievalJob

pytestmark = pytest.mark.integration

ADMIN_KEY = "writes-admin-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ROUNDS = 40


@pytest.fixture
def api(catalog_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = ApiSettings(
        data_dir=tmp_path,
        database_url=catalog_url,
        api_keys=f"{ADMIN_KEY}:admin",  # type: ignore[arg-type]
        pacs="PACS@127.0.0.1:1",  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def busy_catalog(catalog_url: str, api: TestClient) -> Iterator[None]:
    """Another service committing small writes to the catalog, one after another (after
    the API started: it created the catalog)."""
    engine, sessions = open_catalog(catalog_url, writer=True)
    with sessions.begin() as session:
        other = retrievals.new_job(session, origin="request", pacs="PACS", query={}).id
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            with sessions.begin() as session:
                session.execute(
                    update(RetrievalJob)
                    .where(RetrievalJob.id == other)
                    .values(attempts=RetrievalJob.attempts + 1)
                )

    writer = threading.Thread(target=write)
    writer.start()
    yield
    stop.set()
    writer.join()
    engine.dispose()


def test_retrievals_are_queued_and_cancelled_while_the_catalog_is_written(
    api: TestClient, busy_catalog: None
) -> None:
    for _ in range(ROUNDS):
        queued = api.post("/retrievals", json={"study_uid": "1.2.3"}, headers=ADMIN)
        assert queued.status_code == 202, queued.text
        cancelled = api.delete(f"/retrievals/{queued.json()['id']}", headers=ADMIN)
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["state"] == "cancelled"

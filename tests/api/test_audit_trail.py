"""The audit trail itself, on real catalogs (SQLite and PostgreSQL): GET /audit's filters,
pages and refusals, records held while the catalog cannot be written, and pruning by age."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from shared.audit_trail import AuditRecord, AuditTrail, prune
from shared.catalog.database import create_catalog_engine, open_catalog, session_factory
from shared.catalog.states import AuditAction
from shared.settings import load_settings
from tests.audit_site import ADMIN, READ, bearer, stored, write_keys
from tests.support import wait_for

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def record(
    days_ago: float,
    key_name: str = "smith-lab",
    action: AuditAction = AuditAction.STUDY_READ,
    study_uid: str | None = STUDY_A,
) -> AuditRecord:
    return AuditRecord(
        at=NOW - dt.timedelta(days=days_ago),
        key_name=key_name,
        action=action,
        study_uid=study_uid,
        series_uid=None,
        job_id=None,
        status=200,
        bytes_sent=1000,
        client="192.0.2.7",
    )


@pytest.fixture
def api(catalog_url: str, tmp_path: Path) -> Iterator[TestClient]:
    write_keys(tmp_path / "keys.yaml")
    settings = ApiSettings(data_dir=tmp_path, database_url=catalog_url)
    with TestClient(create_app(settings)) as client:
        yield client


# Oldest first, as they happened: (days ago, key, action, study).
HAPPENED = [
    (9, "smith-lab", AuditAction.STUDIES_LIST, None),
    (8, "smith-lab", AuditAction.STUDY_READ, STUDY_A),
    (7, "jones-lab", AuditAction.STUDY_READ, STUDY_B),
    (5, "smith-lab", AuditAction.STUDY_ARCHIVE, STUDY_A),
    (3, "operator", AuditAction.STUDY_PIN, STUDY_B),
    (2, "jones-lab", AuditAction.SERIES_NIFTI, STUDY_B),
    (1, "smith-lab", AuditAction.STUDY_READ, STUDY_B),
]


def _seen(api: TestClient, **filters: Any) -> list[tuple[float, str, str, str | None]]:
    answer = api.get("/audit", params=filters, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return [
        (
            (NOW - dt.datetime.fromisoformat(e["at"])).days,
            e["key_name"],
            e["action"],
            e["study_uid"],
        )
        for e in answer.json()["items"]
    ]


def _newest_first(**wanted: Any) -> list[tuple[float, str, str, str | None]]:
    return [
        (days, key, str(action), study)
        for days, key, action, study in reversed(HAPPENED)
        if all(
            dict(key_name=key, action=action, study_uid=study)[k] == v for k, v in wanted.items()
        )
    ]


def test_the_trail_is_filtered_by_key_action_study_and_time(api: TestClient) -> None:
    trail: AuditTrail = api.app.state.audit_trail  # type: ignore[attr-defined]
    for days, key, action, study in HAPPENED:
        trail.add(record(days, key, action, study))
    # Nothing to wait for: GET /audit writes what the process holds before it reads.
    assert _seen(api) == _newest_first()
    assert _seen(api, key_name="smith-lab") == _newest_first(key_name="smith-lab")
    assert _seen(api, action="study.read") == _newest_first(action=AuditAction.STUDY_READ)
    assert _seen(api, study_uid=STUDY_B) == _newest_first(study_uid=STUDY_B)
    assert _seen(api, key_name="jones-lab", action="series.nifti") == [
        (2, "jones-lab", "series.nifti", STUDY_B)
    ]
    week_ago = (NOW - dt.timedelta(days=7)).isoformat()
    three_days_ago = (NOW - dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S")  # naive: UTC
    assert [days for days, *_ in _seen(api, since=week_ago)] == [1, 2, 3, 5, 7]
    assert [days for days, *_ in _seen(api, until=three_days_ago)] == [5, 7, 8, 9]
    assert [days for days, *_ in _seen(api, since=week_ago, until=three_days_ago)] == [5, 7]
    assert _seen(api, key_name="nobody") == []


def test_pages_run_newest_first_and_end(api: TestClient) -> None:
    trail: AuditTrail = api.app.state.audit_trail  # type: ignore[attr-defined]
    for days, key, action, study in HAPPENED:
        trail.add(record(days, key, action, study))
    ids: list[int] = []
    before: int | None = None
    while True:
        params = {"limit": 3, **({"before": before} if before else {})}
        page = api.get("/audit", params=params, headers=ADMIN).json()
        assert len(page["items"]) <= 3
        ids += [entry["id"] for entry in page["items"]]
        before = page["next"]
        if before is None:
            break
    assert len(ids) == len(HAPPENED) and ids == sorted(ids, reverse=True)
    whole = api.get("/audit", params={"limit": 7}, headers=ADMIN).json()
    assert whole["next"] is None and [e["id"] for e in whole["items"]] == ids


@pytest.mark.parametrize(
    "query",
    [
        "action=study.delete",
        "since=yesterday",
        "since=2024-13-01",
        "until=2024-05-01T25:00:00Z",
        "limit=0",
        "limit=1001",
        "before=0",
        "before=x",
        "study_uid=SMITH",
        "key_name=",
        "patient_name=DOE",
        "key_name=a&key_name=b",
    ],
)
def test_a_bad_filter_is_refused_naming_it(api: TestClient, query: str) -> None:
    answer = api.get(f"/audit?{query}", headers=ADMIN)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == query.split("=")[0]


def test_the_trail_is_for_admin_keys_only(api: TestClient) -> None:
    assert api.get("/audit").status_code == 401
    assert api.get("/audit", headers=bearer("not-a-key-0123456789abcdef")).status_code == 401
    refused = api.get("/audit", headers=READ)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    assert api.get("/audit", headers=ADMIN).status_code == 200


def test_records_are_held_while_the_catalog_cannot_be_written(catalog_url: str) -> None:
    """The catalog is not migrated at first: no audit table to write to."""
    engine = create_catalog_engine(catalog_url, writer=True)
    trail = AuditTrail(session_factory(engine), keep_days=365)
    first = [record(0.3, key_name=f"first-{n}") for n in range(3)]
    for one in first:
        trail.add(one)
    assert trail.flush() == 0  # failed, and logged
    later = record(0.2, key_name="later")
    trail.add(later)
    migrated, _ = open_catalog(catalog_url)
    try:
        assert trail.flush() == 4
        assert [row.key_name for row in stored(session_factory(engine))] == [
            "first-0",
            "first-1",
            "first-2",
            "later",
        ]
        assert trail.flush() == 0  # nothing held twice
    finally:
        migrated.dispose()
        engine.dispose()


def test_records_older_than_the_days_kept_are_deleted(catalog_url: str) -> None:
    engine, sessions = open_catalog(catalog_url, writer=True)
    try:
        trail = AuditTrail(sessions, keep_days=30)
        for days in (400, 31, 30.5, 29.9, 1, 0):
            trail.add(record(days, key_name=f"d{days}"))
        trail.flush()
        assert trail.prune(NOW) == 3
        assert [row.key_name for row in stored(sessions)] == ["d29.9", "d1", "d0"]
        for _ in range(10):
            trail.add(record(100))
        trail.flush()
        assert prune(sessions, NOW - dt.timedelta(days=30), batch=3) == 10  # 4 batches
        assert len(stored(sessions)) == 3
    finally:
        engine.dispose()


def test_the_api_deletes_old_records_at_start(
    catalog_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, sessions = open_catalog(catalog_url, writer=True)
    try:
        before = AuditTrail(sessions, keep_days=365)
        for days in (31, 29):
            before.add(record(days, key_name=f"d{days}"))
        before.flush()
        monkeypatch.setenv("DCMDB_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("DCMDB_DATABASE_URL", catalog_url)
        monkeypatch.setenv("DCMDB_AUDIT_DAYS", "30")
        settings = load_settings(ApiSettings)
        assert settings.audit_days == 30
        with TestClient(create_app(settings)):
            wait_for(lambda: len(stored(sessions)) == 1, 60, "the old record deleted")
        assert [row.key_name for row in stored(sessions)] == ["d29"]
    finally:
        engine.dispose()
    monkeypatch.delenv("DCMDB_AUDIT_DAYS")
    assert load_settings(ApiSettings).audit_days == 365

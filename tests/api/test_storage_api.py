"""GET /storage and the pins, in process: the API application on a real archive and catalog."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.retention import eviction
from services.retention.main import Retention
from shared.catalog.models import Series, Study
from shared.disk import disk_usage
from tests.arrivals import Sorter
from tests.filed_studies import DAY, Archive

pytestmark = pytest.mark.integration

READ_KEY = "storage-read-key-0123456789"
ADMIN_KEY = "storage-admin-key-0123456789"
READ = {"Authorization": f"Bearer {READ_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
RETENTION = {"retention_max_age_days": 30, "min_free": "1MB"}


@pytest.fixture
def archive(sorter: Sorter, testdata: Path, catalog_url: str) -> Archive:
    return Archive(sorter, testdata, catalog_url)


@pytest.fixture
def api(archive: Archive) -> Iterator[TestClient]:
    settings = ApiSettings(
        data_dir=archive.sorter.data,
        database_url=archive.url,
        api_keys=f"{READ_KEY}:read,{ADMIN_KEY}:admin",  # type: ignore[arg-type]
        **RETENTION,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_pin_and_unpin(api: TestClient, archive: Archive) -> None:
    study = archive.study()
    assert api.get(f"/studies/{study}", headers=READ).json()["pinned"] is False
    assert api.post(f"/studies/{study}/pin", headers=READ).status_code == 403
    assert api.post(f"/studies/{study}/pin").status_code == 401
    pinned = api.post(f"/studies/{study}/pin", headers=ADMIN)
    assert pinned.status_code == 200 and pinned.json() == {"study_uid": study, "pinned": True}
    assert api.post(f"/studies/{study}/pin", headers=ADMIN).status_code == 200  # idempotent
    assert api.get(f"/studies/{study}", headers=READ).json()["pinned"] is True
    assert api.get("/studies", headers=READ).json()["items"][0]["pinned"] is True
    unpinned = api.delete(f"/studies/{study}/pin", headers=ADMIN)
    assert unpinned.status_code == 200 and unpinned.json()["pinned"] is False
    assert api.get(f"/studies/{study}", headers=READ).json()["pinned"] is False
    for method in (api.post, api.delete):
        missing = method("/studies/1.2.3.4/pin", headers=ADMIN)
        assert missing.status_code == 404 and "1.2.3.4" in missing.json()["detail"]


def test_storage_shows_the_dry_run_and_the_next_round_does_it(
    api: TestClient, archive: Archive
) -> None:
    old = [archive.study(stamp=time.time_ns() - (40 - n) * DAY) for n in range(3)]
    young = archive.study()
    assert api.post(f"/studies/{old[1]}/pin", headers=ADMIN).status_code == 200

    answer = api.get("/storage", headers=READ)
    assert answer.status_code == 200, answer.text
    storage = answer.json()
    disk = disk_usage(archive.sorter.archive)
    assert storage["archive"]["total_bytes"] == disk.total
    assert storage["archive"]["used_bytes"] + storage["archive"]["free_bytes"] == disk.total
    assert storage["receiving"] is True
    assert storage["thresholds"] == {
        "low_free": None,
        "low_free_bytes": None,
        "target_free": None,
        "target_free_bytes": None,
        "max_age_days": 30,
        "min_free": "1MB",
        "min_free_bytes": 1_000_000,
    }
    assert storage["catalog"]["studies"] == 4 and storage["catalog"]["pinned"] == 1
    assert storage["catalog"]["size_bytes"] == sum(archive.size(uid) for uid in old + [young])
    planned = storage["next_eviction"]
    assert [(s["study_uid"], s["reason"]) for s in planned["studies"]] == [
        (old[0], "age"),
        (old[2], "age"),
    ]
    assert planned["study_count"] == 2
    assert planned["size_bytes"] == archive.size(old[0]) + archive.size(old[2])
    assert planned["studies"][0]["folder"] == str(
        archive.folder(old[0]).relative_to(archive.sorter.archive)
    )
    first = api.get("/storage", headers=READ, params={"limit": 1}).json()["next_eviction"]
    assert len(first["studies"]) == 1 and first["study_count"] == 2
    assert api.get("/storage", headers=READ, params={"limit": -1}).status_code == 422
    assert api.get("/storage").status_code == 401

    evicted = Retention(archive.settings(**RETENTION), archive.sessions).round()
    assert [e.study_uid for e in evicted] == [s["study_uid"] for s in planned["studies"]]
    assert api.get("/storage", headers=READ).json()["next_eviction"]["study_count"] == 0


def test_a_study_being_evicted_is_gone_for_every_route(api: TestClient, archive: Archive) -> None:
    study, other = archive.study(), archive.study()
    candidate = archive.candidate(study)
    with archive.sessions() as session:
        series_uid = session.scalar(
            select(Series.series_instance_uid)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_instance_uid == study)
        )
    assert eviction.claim(archive.sessions, candidate, "space", 60) is not None

    for path in (
        f"/studies/{study}",
        f"/studies/{study}/archive",
        f"/series/{series_uid}",
        f"/series/{series_uid}/nifti",
        f"/series/{series_uid}/preview.png",
    ):
        assert api.get(path, headers=READ).status_code == 404, path
    assert api.post(f"/studies/{study}/pin", headers=ADMIN).status_code == 404
    listed = api.get("/studies", headers=READ).json()["items"]
    assert [s["study_uid"] for s in listed] == [other]
    [lab] = api.get("/physicians", headers=READ).json()
    assert lab["study_count"] == 1 and lab["size_bytes"] == listed[0]["size_bytes"]
    catalog = api.get("/storage", headers=READ).json()["catalog"]
    assert (catalog["studies"], catalog["evicting"]) == (1, 1)

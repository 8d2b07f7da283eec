"""The web page's reads and changes in the audit trail, as a browser makes them: signed in
with a key, the studies page, a study, its thumbnails (the API's own route, by the session
cookie), and an admin's pins; on real catalogs (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.api.web.session import CSRF_FIELD
from tests.arrivals import Sorter
from tests.audit_site import (
    ADMIN,
    ADMIN_KEY,
    OPERATOR,
    PATIENT_ID,
    PATIENT_NAME,
    READ_KEY,
    READER,
    assert_no_patient_data,
    patient_study,
    stored,
    write_keys,
)
from tests.filed_studies import Archive

pytestmark = pytest.mark.integration

_TOKEN = re.compile(rf'name="{CSRF_FIELD}" value="([^"]+)"')


@pytest.fixture
def archive(sorter: Sorter, testdata: Path, catalog_url: str) -> Archive:
    return Archive(sorter, testdata, catalog_url)


@pytest.fixture
def app(archive: Archive) -> Iterator[TestClient]:
    """The application; each browser below is a client of its own, with its own cookies."""
    write_keys(archive.sorter.data / "keys.yaml")
    settings = ApiSettings(data_dir=archive.sorter.data, database_url=archive.url)
    with TestClient(create_app(settings)) as client:
        yield client


def _browser(app: TestClient, key: str) -> TestClient:
    browser = TestClient(app.app, follow_redirects=False)
    form = browser.get("/signin")
    token = _TOKEN.search(form.text)
    assert token is not None, form.text
    signed = browser.post("/signin", data={"key": key, CSRF_FIELD: token[1], "next": "/"})
    assert signed.status_code == 303, signed.text
    return browser


def test_the_pages_record_what_the_visitor_read_and_changed(
    app: TestClient, archive: Archive
) -> None:
    study, series = patient_study(archive)
    reader = _browser(app, READ_KEY)
    listing = reader.get("/", params={"patient_name": PATIENT_NAME, "patient_id": PATIENT_ID})
    assert listing.status_code == 200 and study in listing.text
    page = reader.get(f"/web/studies/{study}")
    assert page.status_code == 200 and f"/series/{series}/preview.png" in page.text
    thumbnail = reader.get(f"/series/{series}/preview.png")
    assert thumbnail.status_code == 200
    assert reader.get("/web/pins").status_code == 403  # an admin's page: refused, unrecorded

    admin = _browser(app, ADMIN_KEY)
    assert admin.get("/web/pins").status_code == 200
    token = _TOKEN.search(admin.get(f"/web/studies/{study}").text)
    assert token is not None
    for pinned in ("1", "0"):
        form = {CSRF_FIELD: token[1], "pinned": pinned}
        assert admin.post(f"/web/studies/{study}/pin", data=form).status_code == 303

    trail = list(reversed(app.get("/audit", headers=ADMIN).json()["items"]))
    assert [
        (e["action"], e["key_name"], e["study_uid"], e["series_uid"], e["status"]) for e in trail
    ] == [
        ("studies.list", READER, None, None, 200),
        ("study.read", READER, study, None, 200),
        ("series.preview", READER, study, series, 200),
        ("studies.list", OPERATOR, None, None, 200),
        ("study.read", OPERATOR, study, None, 200),
        ("study.pin", OPERATOR, study, None, 303),
        ("study.unpin", OPERATOR, study, None, 303),
    ]
    sizes = [len(listing.content), len(page.content), len(thumbnail.content)]
    assert [e["bytes_sent"] for e in trail[:3]] == sizes
    assert_no_patient_data(stored(archive.sessions))

"""schemathesis against the running API's own OpenAPI document, with and without a key:
no answer is a 5xx, every answer matches the schema, nothing is served without a key.

The catalog holds a few real studies (sent through the pipeline), so that generated
requests meet real rows as well as unknown UIDs.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import TESTDATA, fresh_vhost
from tests.system import Dcmdb, dicom_files, send_dicom, wait_for

pytestmark = pytest.mark.e2e

KEY = "schemathesis-read-key-0123456789"
FOLDERS = ("d2n_mr_4slice_uncompressed", "pydicom_small_singles")


@pytest.fixture(scope="module")
def running_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("schema")
    vhosts = fresh_vhost()
    broker = next(vhosts)
    dcmdb = Dcmdb(
        root / "data",
        broker,
        f"sqlite:///{root / 'catalog.sqlite'}",
        extra_env={"DCMDB_STABLE_AGE": "1", "DCMDB_API_KEYS": f"{KEY}:read"},
    )
    dcmdb.start("up")
    url = f"http://127.0.0.1:{dcmdb.api_port}"
    try:
        dcmdb.wait_until_listening()
        send_dicom(dcmdb.port, [f for d in FOLDERS for f in dicom_files(TESTDATA / d)])

        def filed() -> bool:
            try:
                page = httpx.get(f"{url}/studies", headers={"Authorization": f"Bearer {KEY}"})
            except httpx.HTTPError:
                return False
            return page.status_code == 200 and len(page.json()["items"]) >= 2

        wait_for(filed, 120, "studies listed")
        yield url
    finally:
        dcmdb.stop()
        next(vhosts, None)


@pytest.fixture(scope="module")
def api_schema(running_api: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{running_api}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@_SETTINGS
def test_with_a_key_no_server_error_and_answers_match_the_schema(case: schemathesis.Case) -> None:
    # Every check but "schema-valid data is accepted": a cursor is opaque and a date
    # expression can be well-formed text yet no date (20241399); both rightly get a 422.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance]
    )


@schema.parametrize()
@_SETTINGS
def test_without_a_key_nothing_is_served(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, response.text
    path = case.operation.path
    if path in ("/healthz", "/readyz", "/metrics"):
        return
    # 405 for the methods a route does not have, which schemathesis tries as well; 400 or
    # 422 for a body that is not JSON at all, which FastAPI refuses before the key's check.
    refused = (400, 401, 405, 422) if case.body is not None else (401, 405)
    assert response.status_code in refused, (path, case.method, response.status_code)
    assert '"items"' not in response.text and '"study_uid"' not in response.text


def test_traversal_in_every_path_parameter_is_refused(running_api: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    attempts = ("..", "../..", "..%2F..%2Fcatalog.sqlite", "%2E%2E%2F%2E%2E", "/etc/passwd")
    templates = (
        "/studies/{}",
        "/studies/{}/archive",
        "/series/{}",
        "/series/{}/preview.png",
        "/series/{}/nifti",
    )
    for template in templates:
        for attempt in attempts:
            answer = httpx.get(running_api + template.format(attempt), headers=headers)
            assert answer.status_code in (404, 422), (template, attempt, answer.status_code)
            assert b"SQLite format" not in answer.content

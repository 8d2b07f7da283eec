"""schemathesis against the running API's own OpenAPI document, with every key and without:
no answer is a 5xx, every answer matches the schema, nothing is served without the right
key; and path traversal in every path, query and body parameter finds nothing.

The catalog holds a few real studies (sent through the pipeline), so that generated
requests meet real rows as well as unknown UIDs. A PACS is configured but away, so that
retrievals are recorded and checks against it fail as they would in production. A second
API on the same catalog runs without keys (open, on loopback), as a lab may run it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
)

from services.api.app import create_app
from services.api.dependencies import ADMIN
from services.api.settings import ApiSettings
from tests.conftest import TESTDATA, fresh_vhost
from tests.support import free_port, wait_for
from tests.system import Dcmdb, dicom_files, send_dicom

# Each schemathesis test runs every operation's examples as one pytest test: 30 s alone,
# over 300 s on a loaded CI machine, so a limit of their own.
pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup(), pytest.mark.timeout(900)]

READ_KEY = "schemathesis-read-key-0123456789"
ADMIN_KEY = "schemathesis-admin-key-012345678"
FOLDERS = ("d2n_mr_4slice_uncompressed", "pydicom_small_singles")
OPEN_PATHS = ("/healthz", "/readyz")


@dataclass(frozen=True)
class Running:
    url: str  # with keys
    open_url: str  # the same catalog, no keys configured
    study_uid: str
    series_uid: str
    instance_uid: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("schema")
    vhosts = fresh_vhost()
    broker = next(vhosts)
    catalog = f"sqlite:///{root / 'catalog.sqlite'}"
    environment = {
        "DCMDB_STABLE_AGE": "1",
        "DCMDB_API_KEYS": f"{READ_KEY}:read,{ADMIN_KEY}:admin",
        "DCMDB_PACS": f"AWAY@127.0.0.1:{free_port()}",  # nothing listens there
    }
    dcmdb = Dcmdb(root / "data", broker, catalog, extra_env=environment)
    open_api = Dcmdb(root / "data", broker, catalog, extra_env={"DCMDB_API_KEYS": ""})
    dcmdb.start("up")
    url = f"http://127.0.0.1:{dcmdb.api_port}"
    try:
        dcmdb.wait_until_listening()
        send_dicom(dcmdb.port, [f for d in FOLDERS for f in dicom_files(TESTDATA / d)])

        def filed() -> list[dict[str, Any]]:
            try:
                page = httpx.get(f"{url}/studies", headers=bearer(READ_KEY))
            except httpx.HTTPError:
                return []
            return page.json()["items"] if page.status_code == 200 else []

        wait_for(lambda: len(filed()) >= 2, 120, "studies listed")
        study_uid = filed()[0]["study_uid"]
        study = httpx.get(f"{url}/studies/{study_uid}", headers=bearer(READ_KEY)).json()
        open_api.start("api")
        open_url = f"http://127.0.0.1:{open_api.api_port}"
        wait_for(lambda: _answers(f"{open_url}/healthz"), 60, "the open API")
        series_uid = study["series"][0]["series_uid"]
        instances = httpx.get(
            f"{url}/dicomweb/studies/{study_uid}/series/{series_uid}/instances",
            headers=bearer(READ_KEY),
        )
        instance_uid = instances.json()[0]["00080018"]["Value"][0]
        yield Running(url, open_url, study_uid, series_uid, instance_uid)
    finally:
        open_api.stop()
        dcmdb.stop()
        next(vhosts, None)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def breaks_headers(case: schemathesis.Case) -> bool:
    """True for a case schemathesis made to send headers that break the schema (the
    Authorization header left out, say)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return False
    # A case may break several components at once (a query and the headers, say): the
    # phase then names no single location, and each mutation and component names its own.
    data = meta.phase.data
    broken = {getattr(data, "parameter_location", None)}
    broken |= {mutation.parameter_location for mutation in getattr(data, "mutations", ())}
    header = meta.components.get(ParameterLocation.HEADER)
    return ParameterLocation.HEADER in broken or (header is not None and header.mode.is_negative)


def with_key(case: schemathesis.Case, key: str) -> dict[str, str]:
    """The key's header; none for a case that breaks the headers on purpose: the key added
    back would turn it into a valid request, which the API then rightly accepts."""
    return {} if breaks_headers(case) else bearer(key)


@pytest.fixture(scope="module")
def api_schema(running: Running) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json")


@pytest.fixture(scope="module")
def open_api_schema(running: Running) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{running.open_url}/openapi.json")


# STOW-RS's body (multipart/related) is sent as the bytes generated: never a valid one, so
# that every case exercises the refusal of a body that does not parse.
schemathesis.serializer.alias("multipart/related", "application/octet-stream")
schema = schemathesis.pytest.from_fixture("api_schema")
open_schema = schemathesis.pytest.from_fixture("open_api_schema")
_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
# Whether a key is refused depends on the route, not on the values sent: fewer examples.
_KEY_SETTINGS = settings(_SETTINGS, max_examples=15)
# Every check but "schema-valid data is accepted": a cursor is opaque and a date
# expression can be well-formed text yet no date (20241399); both rightly get a 422.
_EXCLUDED = [positive_data_acceptance]
PACS_AWAY = "the PACS could not be asked"
# Not schemathesis's 10 s: on a loaded 2-core machine a slow answer is not a wrong one.
_TIMEOUT = 60
# One connection pool for every case (a new one per case costs more than most answers),
# and no cookies kept: a session cookie set by one case must not speak for the next.
SESSION = requests.Session()
SESSION.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))


def call_and_validate(
    case: schemathesis.Case, *, excluded: tuple[Any, ...] = (), **kwargs: Any
) -> Response:
    """Every check but `excluded`; a 5xx only as the 502 the routes that ask the PACS
    document for a PACS that does not answer (the one configured here never does)."""
    response = case.call(session=SESSION, timeout=_TIMEOUT, **kwargs)
    pacs_away = response.status_code == 502 and PACS_AWAY in response.text
    excluded = (*_EXCLUDED, *excluded, *([not_a_server_error] if pacs_away else []))
    case.validate_response(response, excluded_checks=list(excluded))
    assert response.status_code < 500 or pacs_away, response.text
    return response


def admin_operations() -> set[tuple[str, str]]:
    """(method, path) of the routes that need the admin scope, read off the app itself."""
    found = set()
    routes = list(create_app(ApiSettings()).routes)
    while routes:
        route = routes.pop()
        # an included router (FastAPI keeps it whole, with its own routes)
        routes += getattr(getattr(route, "original_router", None), "routes", [])
        if ADMIN[0] in getattr(route, "dependencies", []):
            found |= {(method, route.path) for method in route.methods}  # type: ignore[attr-defined]
    return found


ADMIN_OPERATIONS = admin_operations()


def test_the_admin_routes_are_known() -> None:
    """Guards the list the key tests rely on: a new admin route shows up here."""
    assert admin_operations() == {
        ("GET", "/metrics"),
        ("POST", "/studies/{study_uid}/repair"),
        ("POST", "/studies/{study_uid}/pin"),
        ("DELETE", "/studies/{study_uid}/pin"),
        ("GET", "/audit"),
        ("POST", "/webhooks"),
        ("GET", "/webhooks"),
        ("GET", "/webhooks/{webhook_id}"),
        ("DELETE", "/webhooks/{webhook_id}"),
        ("GET", "/webhooks/{webhook_id}/deliveries"),
        ("POST", "/reconciliation/{difference_id}/forward"),
    }


def refused(case: schemathesis.Case, status: int, code: int) -> bool:
    """Refused for want of the right key: `code`, or 405 for a method the route does not
    have (schemathesis tries those too), or 400/422 for a body FastAPI cannot parse, which
    it refuses before any dependency runs."""
    return status in ((code, 405, 400, 422) if case.body is not None else (code, 405))


@schema.parametrize()
@_SETTINGS
def test_with_the_admin_key_no_server_error_and_answers_match_the_schema(
    case: schemathesis.Case,
) -> None:
    call_and_validate(case, headers=with_key(case, ADMIN_KEY))


@schema.parametrize()
@_KEY_SETTINGS
def test_with_a_read_key_no_server_error_and_no_admin_route(case: schemathesis.Case) -> None:
    headers = with_key(case, READ_KEY)
    response = call_and_validate(case, headers=headers)
    if (case.method.upper(), case.operation.path) in ADMIN_OPERATIONS:
        assert refused(case, response.status_code, 403 if headers else 401), response.text


@schema.parametrize()
@_KEY_SETTINGS
def test_without_the_right_key_nothing_is_served(case: schemathesis.Case) -> None:
    for headers in (
        {},
        bearer("an-unknown-key-0123456789abcdef"),
        {"Authorization": f"Basic {READ_KEY}"},  # a known key in the wrong scheme
        {"Authorization": f"Bearer {READ_KEY[:-1]}"},  # one character short
    ):
        response = case.call(session=SESSION, headers=headers, timeout=_TIMEOUT)
        assert response.status_code < 500, response.text
        if case.operation.path in OPEN_PATHS:
            continue
        assert refused(case, response.status_code, 401), (case.method, response.status_code)
        assert '"items"' not in response.text and '"study_uid"' not in response.text


@open_schema.parametrize()
@_SETTINGS
def test_without_keys_configured_no_server_error_and_answers_match_the_schema(
    case: schemathesis.Case,
) -> None:
    # Open by design, as documented: the bearer scheme in the schema is what a keyed API
    # wants, and this one neither needs nor checks the header.
    excluded = [ignored_auth, missing_required_header]
    if breaks_headers(case):
        excluded.append(negative_data_rejection)
    call_and_validate(case, excluded=tuple(excluded))


# --- path traversal, parameter by parameter -----------------------------------------------

TRAVERSALS = (
    "..",
    "../..",
    "../../../../../../etc/passwd",
    "..%2F..%2Fcatalog.sqlite",
    "%2E%2E%2F%2E%2E%2Fcatalog.sqlite",
    "..\\..\\catalog.sqlite",
    "/etc/passwd",
    "....//....//etc/passwd",
    "data/../../catalog.sqlite",
    "%00",
    "nifti/..%00/../catalog.sqlite",
    "~root",
    "\u2025/\u2025/catalog.sqlite",  # two-dot leader, folded to .. by some normalisers
)
LEAKS = (b"SQLite format", b"root:x:0:0", b"amqp://")


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, items in spec["paths"].items():
        for method, operation in items.items():
            yield method.upper(), path, operation


def attempted(path: str, values: dict[str, str]) -> str:
    """`path` with its parameters filled in, as sent (before any normalisation)."""
    for name, value in values.items():
        path = path.replace(f"{{{name}}}", value)
    return path


def attempt(
    client: httpx.Client,
    method: str,
    path: str,
    values: dict[str, str],
    body: dict[str, str] | None,
) -> httpx.Response:
    filled = attempted(path, values)
    query = {name: value for name, value in values.items() if f"{{{name}}}" not in path}
    return client.request(method, filled, params=query, json=body)


def test_traversal_in_every_path_query_and_body_parameter_finds_nothing(
    running: Running,
) -> None:
    """With the admin key, so that no refusal for want of access hides what a parameter
    would do; the other path parameters name a real study, series or job."""
    spec = httpx.get(f"{running.url}/openapi.json").json()
    real = {
        "study_uid": running.study_uid,
        "series_uid": running.series_uid,
        "instance_uid": running.instance_uid,
        "frames": "1",
        "tag": "7FE00010",
        "job_id": "1",
        "webhook_id": "1",
        "difference_id": "1",
    }
    client = httpx.Client(base_url=running.url, headers=bearer(ADMIN_KEY), timeout=_TIMEOUT)
    tried = 0
    routes = [re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path)) for _, path, _ in operations(spec)]
    for method, path, operation in operations(spec):
        parameters = [(p["in"], p["name"]) for p in operation.get("parameters", [])]
        content = (operation.get("requestBody") or {}).get("content", {})
        body_fields = []
        if "application/json" in content:  # not STOW-RS's multipart body: it has no fields
            model = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            body_fields = list(spec["components"]["schemas"][model]["properties"])
        for where, name in [*parameters, *(("body", field) for field in body_fields)]:
            for traversal in TRAVERSALS:
                values = {n: real[n] for kind, n in parameters if kind == "path"}
                body = {"study_date": "today"} if body_fields else None
                if where == "body":
                    body = {name: traversal}
                else:
                    values[name] = traversal
                answer = attempt(client, method, path, values, body)
                tried += 1
                where_what = (method, path, name, traversal, answer.status_code)
                assert answer.status_code < 500 or PACS_AWAY in answer.text, where_what
                assert not any(leak in answer.content for leak in LEAKS), where_what
                if where == "path":
                    # "/studies/.." is "/" once normalised: the web page, which sends a
                    # caller without a session to its sign-in form.
                    to_sign_in = answer.status_code == 303 and answer.headers[
                        "location"
                    ].startswith("/signin")
                    # "/dicomweb/studies/../series" is another route once normalised (the
                    # listing /dicomweb/series), which answers as it does.
                    elsewhere = answer.request.url.path != urlsplit(attempted(path, values)).path
                    to_another_route = elsewhere and any(
                        route.fullmatch(answer.request.url.path) for route in routes
                    )
                    assert (
                        answer.status_code in (404, 405, 422) or to_sign_in or to_another_route
                    ), where_what
    client.close()
    assert tried > 200

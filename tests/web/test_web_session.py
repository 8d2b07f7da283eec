"""The session cookie itself: signed, timed, never the key; its secret; its holder found
again in the keys file on every request."""

from __future__ import annotations

import os
import stat
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import Request, Response
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.api.web.session import (
    COOKIE,
    SECRET_FILE,
    SessionCookies,
    WebSession,
    holder,
    secret_in,
    signed_in,
)
from shared.keys import KeyEntry, KeyRing, Scope, digest, editing

KEY = "dcmdb_session-test-key-0123456789abcdefgh"
OTHER_KEY = "dcmdb_session-test-key-other-0123456789ab"


def _request(cookie: str = "", scheme: str = "http", keys: KeyRing | None = None) -> Request:
    headers = [(b"cookie", f"{COOKIE}={cookie}".encode())] if cookie else []
    app = SimpleNamespace(state=SimpleNamespace(keys=keys))
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": scheme,
            "path": "/",
            "query_string": b"",
            "headers": headers,
            "server": ("127.0.0.1", 80),
            "app": app,
        }  # fmt: skip
    )


def _cookie_of(response: Response) -> tuple[str, str]:
    header = response.headers["set-cookie"]
    return header.split(";", 1)[0].split("=", 1)[1], header


def _written(cookies: SessionCookies, session: WebSession, scheme: str = "http") -> str:
    response = Response()
    cookies.write(response, _request(scheme=scheme), session)
    return _cookie_of(response)[0]


def test_a_session_reads_back_and_a_forged_one_does_not() -> None:
    cookies = SessionCookies(b"s" * 64, timedelta(hours=1))
    session = WebSession.fresh("lab-a", digest(KEY)[:16])
    value = _written(cookies, session)
    assert cookies.read(_request(value)) == session
    assert KEY not in value and digest(KEY) not in value
    tampered = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    assert cookies.read(_request(tampered)) is None
    assert SessionCookies(b"t" * 64, timedelta(hours=1)).read(_request(value)) is None
    assert cookies.read(_request("")) is None


def test_an_expired_session_is_refused() -> None:
    cookies = SessionCookies(b"s" * 64, timedelta(seconds=0))
    value = _written(cookies, WebSession.fresh("lab-a", digest(KEY)[:16]))
    time.sleep(1.2)  # the signature's time stamp counts whole seconds
    assert cookies.read(_request(value)) is None


def test_the_cookie_is_secure_over_https() -> None:
    cookies = SessionCookies(b"s" * 64, timedelta(hours=12))
    response = Response()
    cookies.write(response, _request(scheme="https"), WebSession.fresh())
    header = _cookie_of(response)[1]
    assert "Secure" in header and "HttpOnly" in header and "SameSite=strict" in header
    assert "Max-Age=43200" in header


def test_csrf_tokens_belong_to_their_session() -> None:
    cookies = SessionCookies(b"s" * 64, timedelta(hours=1))
    one, two = WebSession.fresh(), WebSession.fresh()
    assert cookies.csrf_valid(one, cookies.csrf_token(one))
    assert not cookies.csrf_valid(one, cookies.csrf_token(two))
    assert not cookies.csrf_valid(one, "")
    assert not cookies.csrf_valid(one, None)


def test_the_secret_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    first = secret_in(tmp_path)
    assert secret_in(tmp_path) == first and len(first) == 64
    mode = stat.S_IMODE(os.stat(tmp_path / SECRET_FILE).st_mode)
    assert mode == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # nothing left aside


def test_the_configured_secret_wins(tmp_path: Path) -> None:
    configured = ApiSettings(data_dir=tmp_path, session_secret="x" * 40)  # type: ignore[arg-type]
    generated = ApiSettings(data_dir=tmp_path)
    session = WebSession.fresh("lab-a", digest(KEY)[:16])
    value = _written(SessionCookies.of(configured), session)
    assert SessionCookies.of(configured).read(_request(value)) == session
    assert SessionCookies.of(generated).read(_request(value)) is None
    with pytest.raises(ValueError, match="session_secret"):
        ApiSettings(data_dir=tmp_path, session_secret="short")  # type: ignore[arg-type]
    unset = ApiSettings(data_dir=tmp_path, session_secret="")  # type: ignore[arg-type]
    assert unset.session_secret is None  # an empty line in .env


def test_a_session_ends_when_its_key_is_revoked_or_replaced(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"

    def keys_file(key: str | None) -> None:
        with editing(path) as document:
            document.keys = (
                [KeyEntry(name="lab-a", scope=Scope.READ, labs=("A",), sha256=digest(key))]
                if key
                else []
            )
        os.utime(path, ns=(time.time_ns(), time.time_ns()))

    keys_file(KEY)
    ring = KeyRing(path, {})
    caller = ring.caller(KEY)
    assert caller is not None
    session = signed_in(caller, KEY)
    request = _request(keys=ring)
    assert holder(request, session) == caller
    keys_file(OTHER_KEY)  # the name given to a new key
    assert holder(request, session) is None
    keys_file(KEY)
    assert holder(request, session) == caller
    keys_file(None)  # revoked
    assert holder(request, session) is None
    assert holder(request, WebSession.fresh()) is None  # never signed in


def _sign_in(client: TestClient, key: str | None) -> httpx.Response:
    form = client.get("/signin")
    token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    fields = {"csrf_token": token, "next": "/web/retrievals"} | ({"key": key} if key else {})
    return client.post("/signin", data=fields, follow_redirects=False)


def test_without_keys_the_page_is_open_on_loopback(tmp_path: Path) -> None:
    with TestClient(create_app(ApiSettings(data_dir=tmp_path))) as client:
        assert client.get("/", follow_redirects=False).headers["location"] == "/signin"
        assert "Continue" in client.get("/signin").text
        signed = _sign_in(client, None)
        assert (signed.status_code, signed.headers["location"]) == (303, "/web/retrievals")
        page = client.get("/")
        assert page.status_code == 200 and "anonymous" in page.text
        assert client.get("/web/storage").status_code == 200  # an admin, as the open API


def test_a_key_of_dcmdb_api_keys_signs_in(tmp_path: Path) -> None:
    settings = ApiSettings(data_dir=tmp_path, api_keys=f"{KEY}:read")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        assert _sign_in(client, OTHER_KEY).status_code == 401
        assert _sign_in(client, KEY).status_code == 303
        assert "DCMDB_API_KEYS #1" in client.get("/").text
        assert client.get("/web/storage").status_code == 403  # a read key
        assert client.get("/studies").json() == {"items": [], "next": None}


@pytest.mark.parametrize("target", ["https://elsewhere.test/", "//elsewhere.test/", "/\t/x", "x"])
def test_a_sign_in_never_leads_elsewhere(tmp_path: Path, target: str) -> None:
    settings = ApiSettings(data_dir=tmp_path, api_keys=f"{KEY}:read")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        form = client.get("/signin")
        token = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        answer = client.post(
            "/signin",
            data={"csrf_token": token, "key": KEY, "next": target},
            follow_redirects=False,
        )
        assert answer.headers["location"] == "/"

"""Who sees what through the web page: a lab key never sees another lab, not even by
typing an address; sessions end with sign-out and with the key's revocation; every
change needs the session's CSRF token; bad input is a 4xx page; the JSON API answers as
before.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from services.api.web.session import COOKIE, CSRF_HEADER
from shared.catalog.models import Study
from tests.web.conftest import Tab
from tests.web.site import LAB_A, LAB_B, Site, fill, serving, study_of

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]

A_FOLDER, B_FOLDER = "d2n_mr_4slice_uncompressed", "d2n_hitachi_mr"
UNKNOWN = "1.2.826.0.1.3680043.8.498.999999"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web-access")
    url = fill(root / "data", {LAB_A: [A_FOLDER], LAB_B: [B_FOLDER]})
    with serving(root / "data", url) as running:
        yield running


def signed_in(site: Site, key_name: str) -> tuple[httpx.Client, str]:
    """An HTTP client with a session of `key_name`, and the session's CSRF token."""
    client = httpx.Client(base_url=site.url)
    form = client.get("/signin")
    token = _token(form.text)
    answer = client.post("/signin", data={"csrf_token": token, "key": site.key(key_name)})
    assert answer.status_code == 303, answer.text
    return client, _token(client.get("/").text)


def _token(page: str) -> str:
    marker = 'name="csrf_token" value="'
    return page.split(marker, 1)[1].split('"', 1)[0]


def test_a_lab_key_never_sees_another_lab(site: Site, tab: Tab) -> None:
    other = study_of(B_FOLDER)
    (other_series,) = [s.series_instance_uid for s in site.series(other)]
    tab.sign_in(site.url, site.key("lab-a"))
    page = tab.page
    assert LAB_B not in page.locator("table.studies").inner_text()
    page.goto(f"{site.url}/?physician={LAB_B}")
    expect(page.locator("table.studies tbody tr")).to_have_count(0)

    def shown(uid: str) -> tuple[int, str]:
        answer = page.goto(f"{site.url}/web/studies/{uid}")
        assert answer is not None
        return answer.status, page.locator("main").inner_text().replace(uid, "UID")

    assert shown(other) == shown(UNKNOWN)  # the same 404 page: not even that it exists
    assert shown(other)[0] == 404
    tab.shoot("not-found")
    for path in (
        f"/studies/{other}",
        f"/studies/{other}/archive?format=all",
        f"/series/{other_series}/preview.png",
        f"/series/{other_series}/nifti?sidecar=true",
        f"/series/{other_series}",
    ):
        answer = page.goto(f"{site.url}{path}")
        assert answer is not None and answer.status == 404, path
    # Its own lab's, through the same session.
    (own_series,) = [s.series_instance_uid for s in site.series(study_of(A_FOLDER))]
    answer = page.goto(f"{site.url}/series/{own_series}/preview.png")
    assert answer is not None and answer.status == 200
    physicians = page.goto(f"{site.url}/physicians")
    assert physicians is not None and [p["folder"] for p in physicians.json()] == [LAB_A]


def test_sign_out_ends_the_session(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-b"))
    page = tab.page
    before = {c["name"]: c["value"] for c in page.context.cookies()}[COOKIE]
    page.click("text=Sign out")
    expect(page).to_have_url(f"{site.url}/signin")
    after = {c["name"]: c["value"] for c in page.context.cookies()}
    assert after.get(COOKIE) != before  # gone; the sign-in form gave a new, unsigned one
    page.goto(f"{site.url}/web/studies/{study_of(B_FOLDER)}")
    expect(page).to_have_url(f"{site.url}/signin?next=%2Fweb%2Fstudies%2F{study_of(B_FOLDER)}")
    answer = page.goto(f"{site.url}/studies")
    assert answer is not None and answer.status == 401


def test_a_revoked_key_ends_its_sessions_at_once(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-a-spare"))
    page = tab.page
    expect(page.locator("table.studies tbody tr")).to_have_count(1)
    site.revoke("lab-a-spare")
    page.reload()
    expect(page).to_have_url(f"{site.url}/signin")
    answer = page.goto(f"{site.url}/studies/{study_of(A_FOLDER)}/archive")
    assert answer is not None and answer.status == 401
    page.goto(f"{site.url}/signin")
    page.fill("#key", site.key("lab-a-spare"))
    page.click("form[action='/signin'] button[type=submit]")
    expect(page.locator(".problem")).to_have_text("Unknown or revoked key.")


def test_the_cookie_holds_no_key_and_is_strict_and_http_only(site: Site) -> None:
    client, _ = signed_in(site, "admin")
    answer = client.get("/signin")  # a session exists: no new cookie
    assert "set-cookie" not in answer.headers
    fresh = httpx.Client(base_url=site.url)
    form = fresh.get("/signin")
    signed = fresh.post("/signin", data={"csrf_token": _token(form.text), "key": site.key("admin")})
    header = signed.headers["set-cookie"]
    assert f"{COOKIE}=" in header
    assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/" in header
    assert "Secure" not in header  # served over http here
    value = signed.cookies[COOKIE]
    assert site.key("admin") not in value and site.key("admin")[6:] not in value
    client.close()
    fresh.close()


def test_every_change_needs_the_csrf_token(site: Site) -> None:
    client, token = signed_in(site, "admin")
    study = study_of(A_FOLDER)
    refused = [
        client.post(f"/web/studies/{study}/pin", data={"pinned": "1"}),
        client.post(f"/web/studies/{study}/pin", data={"pinned": "1", "csrf_token": "0" * 64}),
        client.post("/signout"),
        client.post(f"/studies/{study}/pin"),  # the API, with the cookie only
        client.delete(f"/studies/{study}/pin", headers={CSRF_HEADER: "wrong"}),
        client.post("/retrievals", json={"study_uid": "1.2.3"}),
    ]
    assert [answer.status_code for answer in refused] == [403] * len(refused)
    assert "CSRF" in refused[3].json()["detail"]
    with site.sessions() as session:
        assert not session.query(Study).filter_by(study_instance_uid=study).one().pinned

    pinned = client.post(f"/web/studies/{study}/pin", data={"pinned": "1", "csrf_token": token})
    assert pinned.status_code == 303
    assert client.delete(f"/studies/{study}/pin", headers={CSRF_HEADER: token}).json() == {
        "study_uid": study,
        "pinned": False,
    }
    assert client.post(f"/studies/{study}/pin", data={"csrf_token": token}).status_code == 200
    assert client.delete(f"/studies/{study}/pin", headers={CSRF_HEADER: token}).status_code == 200
    # Another session's token is not this one's.
    _, other_token = signed_in(site, "admin")
    other = client.post(f"/studies/{study}/pin", headers={CSRF_HEADER: other_token})
    assert other.status_code == 403
    # A sign-in form is protected too.
    stranger = httpx.Client(base_url=site.url)
    assert stranger.post("/signin", data={"key": site.key("admin")}).status_code == 403
    client.close()
    stranger.close()


def test_a_form_posted_from_another_site_carries_no_session(site: Site, tab: Tab) -> None:
    """SameSite=Strict: a page elsewhere that posts a form to dcmdb sends no cookie."""
    tab.sign_in(site.url, site.key("admin"))
    study = study_of(A_FOLDER)
    attack = (
        f"<form method=post action='{site.url}/studies/{study}/pin'></form>"
        "<script>document.forms[0].submit()</script>"
    )
    tab.page.route("http://elsewhere.test/**", lambda route: route.fulfill(body=attack,
                   content_type="text/html"))  # fmt: skip
    tab.page.goto("http://elsewhere.test/")
    tab.page.wait_for_url(f"{site.url}/studies/{study}/pin")
    assert "an API key is required" in tab.page.inner_text("body")
    with site.sessions() as session:
        assert not session.query(Study).filter_by(study_instance_uid=study).one().pinned


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/?date_from=2024-13-45", 400),
        ("GET", "/?date_from=2024-05-02&date_to=2024-05-01", 400),
        ("GET", "/?cursor=not-a-cursor", 400),
        ("GET", "/?sort=size", 400),
        ("GET", "/?limit=100000", 400),
        ("GET", f"/web/studies/{UNKNOWN}", 404),
        ("GET", "/web/studies/%00..%5C..", 404),
        ("GET", "/web/no-such-page", 404),
        ("GET", "/signout", 405),
        ("POST", "/web/retrievals/not-a-number/cancel", 400),
        ("POST", "/web/retrievals/99999/cancel", 404),
        ("POST", f"/web/studies/{UNKNOWN}/pin", 404),
        ("GET", f"/web/studies/{UNKNOWN}/pacs-check", 404),
    ],
)
def test_bad_input_is_a_4xx_page(site: Site, method: str, path: str, code: int) -> None:
    client, token = signed_in(site, "admin")
    answer = client.request(method, path, data={"csrf_token": token, "pinned": "1"}
                            if method == "POST" else None)  # fmt: skip
    assert answer.status_code == code, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "<h1>" in answer.text
    if code == 405:
        assert answer.headers["allow"] == "POST"
    client.close()


def test_the_json_api_answers_as_before(site: Site) -> None:
    api = httpx.Client(base_url=site.url)
    assert api.get("/studies").status_code == 401
    assert api.get("/studies").json()["detail"].startswith("an API key is required")
    assert api.get("/no-such-route").json() == {"detail": "Not Found"}
    bearer = {"Authorization": f"Bearer {site.key('lab-b')}"}
    items = api.get("/studies", headers=bearer).json()["items"]
    assert {item["physician_folder"] for item in items} == {LAB_B}
    paths = set(api.get("/openapi.json").json()["paths"])
    assert not {p for p in paths if p == "/" or p.startswith(("/web/", "/signin", "/signout"))}
    assert "/docs" not in paths and "/studies/{study_uid}" in paths
    api.close()

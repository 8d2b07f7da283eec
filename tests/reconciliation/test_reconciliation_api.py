"""What people see of the reconciliation: ``GET /reconciliation`` (filtered by scanner,
state and deadline; a lab's key sees its labs' rows only) and the panel on the web page's
studies page, over a catalog a real check (dcmqrscp scanner and PACS) filled."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from shared.catalog.database import open_catalog
from shared.reconciliation import reconcile_scanner
from tests.reconciliation.peers import Studies, site
from tests.web.site import LAB_A, Site, serving

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]


@dataclass
class Checked:
    api: Site
    studies: Studies


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checked]:
    root = tmp_path_factory.mktemp("reconciliation-api")
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    with site(root / "peers") as peers:
        settings = peers.settings(url)
        engine, sessions = open_catalog(url, writer=True)
        try:
            reconcile_scanner(settings, sessions, settings.scanner("console"))
        finally:
            engine.dispose()
        with serving(root / "data", url, pacs_file=peers.peers_file) as api:
            yield Checked(api, peers.studies)


def _get(checked: Checked, key: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{checked.api.url}/reconciliation",
        params=params,
        headers={"Authorization": f"Bearer {checked.api.key(key)}"},
        timeout=30,
    )


def _studies(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {row["study_uid"] for row in answer.json()["differences"]}


def test_an_admin_sees_every_difference_nearest_deadline_first(checked: Checked) -> None:
    answer = _get(checked, "admin")
    s = checked.studies
    assert _studies(answer) == {s.missing.uid, s.partial.uid, s.short.uid}
    deadlines = [row["deadline"] for row in answer.json()["differences"]]
    assert deadlines == sorted(deadlines)
    (run,) = answer.json()["runs"]
    assert (run["scanner"], run["state"], run["studies"], run["missing"]) == (
        "console",
        "checked",
        4,
        3,
    )


def test_a_lab_key_sees_its_labs_rows_only(checked: Checked) -> None:
    s = checked.studies
    assert LAB_A == "SMITH_JOHN"
    assert _studies(_get(checked, "lab-a")) == {s.partial.uid, s.short.uid}
    assert _studies(_get(checked, "lab-b")) == set()


def test_the_filters(checked: Checked) -> None:
    s = checked.studies
    before = str(s.partial.date + dt.timedelta(days=14))
    assert _studies(_get(checked, "admin", deadline_before=before)) == {s.partial.uid}
    assert _studies(_get(checked, "admin", state="closed")) == set()
    assert _studies(_get(checked, "admin", scanner="another")) == set()
    assert _studies(_get(checked, "admin", scanner="console", state="open")) == {
        s.missing.uid,
        s.partial.uid,
        s.short.uid,
    }
    for bad in ({"state": "lost"}, {"deadline_before": "tomorrow"}, {"limit": "0"}):
        assert _get(checked, "admin", **bad).status_code == 422, bad


def test_the_studies_page_shows_the_labs_studies_at_risk(checked: Checked) -> None:
    s = checked.studies
    with httpx.Client(base_url=checked.api.url, timeout=30) as client:
        token = _token(client.get("/signin").text)
        client.post("/signin", data={"csrf_token": token, "key": checked.api.key("lab-a")})
        page = client.get("/")
    assert page.status_code == 200
    assert "Not on the PACS yet" in page.text
    assert s.partial.uid in page.text and s.short.uid in page.text
    assert s.missing.uid not in page.text  # another lab's


def _token(page: str) -> str:
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]

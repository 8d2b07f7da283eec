"""The labs' BIDS datasets on the web page, in Chromium: a study's session downloads as a
ZIP from the study's page, and the studies page of one lab shows the command that exports
the lab's whole dataset."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.bids_sessions import build_session, session_of
from tests.web.conftest import Tab
from tests.web.site import LAB_A, LAB_B, Site, fill, serving, study_of

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]

T1W = "siemens_xa30_t1w_3d_classic"  # given a BIDS session
CT = "d2n_ct_gantry_tilt"  # none
LABS = {LAB_A: [T1W, CT], LAB_B: ["d2n_hitachi_mr"]}
COMMAND = f"dcmdb bids export --physician {LAB_A} -o {LAB_A}-bids"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web-bids")
    url = fill(root / "data", LABS)
    with serving(root / "data", url) as running:
        archive = running.settings.archive_root
        assert build_session(running.sessions, archive, study_of(CT)) is None  # left over
        session_of(running.sessions, archive, study_of(T1W))
        yield running


def test_a_study_with_a_session_downloads_it_as_bids(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-a"))
    page = tab.page
    page.goto(f"{site.url}/web/studies/{study_of(T1W)}")
    link = page.locator("a.bids")
    expect(link).to_have_text("BIDS (ZIP)")
    tab.shoot("study-bids")
    with page.expect_download() as event:
        link.click()
    download = event.value
    assert download.suggested_filename.startswith(f"{LAB_A}_sub-")
    assert download.suggested_filename.endswith("_bids.zip")
    saved = download.path()
    assert saved is not None
    names = zipfile.ZipFile(io.BytesIO(Path(saved).read_bytes())).namelist()
    assert {"dataset_description.json", "participants.tsv"} <= set(names)
    assert any(name.startswith("sub-") and name.endswith(".nii.gz") for name in names)

    page.goto(f"{site.url}/web/studies/{study_of(CT)}")
    expect(page.locator(".downloads")).to_contain_text("No BIDS session yet")
    expect(page.locator("a.bids")).to_have_count(0)


def test_a_lab_s_studies_page_shows_how_to_export_its_dataset(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-a"))
    page = tab.page
    command = page.locator("#bids-export-command")
    expect(command).to_have_text(f"DCMDB_API_URL={site.url} {COMMAND}")
    tab.shoot("studies-bids-export", full_page=False)
    button = page.locator("button[data-copy=bids-export-command]")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    button.click()
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == command.inner_text()
    # Where the page may not write to the clipboard, the command is selected for Ctrl+C.
    page.context.clear_permissions()
    page.evaluate(
        "() => { navigator.clipboard.writeText = () => Promise.reject(new Error('denied')); }"
    )
    button.click()
    expect(button).to_have_text("Selected: press Ctrl+C")
    assert page.evaluate("getSelection().toString()") == command.inner_text()


def test_the_export_is_offered_only_where_one_lab_is_in_view(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("admin"))
    page = tab.page
    expect(page.locator("table.studies tbody tr")).to_have_count(3)
    expect(page.locator("#bids-export-command")).to_have_count(0)  # every lab
    page.goto(f"{site.url}/?physician={LAB_B}")
    expect(page.locator("#bids-export-command")).to_contain_text(f"--physician {LAB_B} ")

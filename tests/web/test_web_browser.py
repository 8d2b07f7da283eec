"""The web page as people use it, in Chromium: sign in, search, open a study, see its
previews, download its files; the admins' PACS check, retrievals with live progress,
storage and pins; the offline /docs. Screenshots of each page are saved to be looked at.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Download, Page, expect
from sqlalchemy import select

from shared import retrievals
from shared.catalog.models import RetrievalStudy, Study
from shared.catalog.states import JobState
from tests.arrivals import dicom_files
from tests.conftest import TESTDATA
from tests.pacs_peers import Dcmqrscp
from tests.support import free_port, wait_for
from tests.web.conftest import Tab
from tests.web.site import LAB_A, LAB_B, Site, fill, serving, study_of

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]

MR = "d2n_mr_4slice_uncompressed"  # 4 MR slices: one .nii.gz
DWI = "siemens_xa30_dwi_enhanced_pa"  # diffusion: .nii.gz with .bval and .bvec
SHORT = "d2n_ct_gantry_tilt"  # filed one instance short: the PACS has it whole
LABS = {
    LAB_A: [MR, DWI, "pydicom_nonimage_objects", SHORT],
    LAB_B: ["d2n_hitachi_mr", "pydicom_small_singles"],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web")
    url = fill(root / "data", LABS, short={SHORT: 1})
    with Dcmqrscp(root / "pacs", ("DCMDB", "127.0.0.1", free_port())) as pacs:
        pacs.fill(dicom_files(TESTDATA, SHORT))
        with serving(
            root / "data",
            url,
            pacs=f"DCMQRSCP@127.0.0.1:{pacs.port}",
            # Every study is old enough for retention's dry run to list it.
            retention_max_age_days=1e-6,
            stable_age=0.001,
        ) as running:
            yield running


def _saved(download: Download) -> bytes:
    path = download.path()
    assert path is not None
    return Path(path).read_bytes()


def _rows(page: Page) -> list[str]:
    return page.locator("table.studies tbody tr").all_inner_texts()


def test_sign_in_search_open_a_study_and_download_its_nifti(site: Site, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{site.url}/")
    expect(page).to_have_url(f"{site.url}/signin")  # no session: the sign-in form
    tab.shoot("signin")
    tab.sign_in(site.url, site.key("lab-a"))
    rows = _rows(page)
    assert len(rows) == len(site.studies(LAB_A)) and all(LAB_A in row for row in rows)
    tab.shoot("studies")

    page.fill("input[name=modality]", "mr")
    page.click("form.search button[type=submit]")
    expect(page.locator("table.studies tbody tr")).to_have_count(2)  # the MR and the DWI
    page.fill("input[name=description]", "cheng")  # the DWI study's "Cheng test"
    page.click("form.search button[type=submit]")
    expect(page.locator("table.studies tbody tr")).to_have_count(1)
    page.click("form.search >> text=Clear")

    mr = study_of(MR)
    page.click(f"a[href='/web/studies/{mr}'] >> nth=0")
    expect(page).to_have_url(f"{site.url}/web/studies/{mr}")
    thumbs = page.locator("img.thumb")
    expect(thumbs).to_have_count(1)
    loaded = "images => images.every(i => i.complete && i.naturalWidth > 0)"
    wait_for(lambda: thumbs.evaluate_all(loaded), 30, "the previews to load")
    tab.shoot("study")

    with page.expect_download() as event:
        page.click("text=NIfTI (.nii.gz)")
    content = gzip.decompress(_saved(event.value))
    assert struct.unpack("<i", content[:4])[0] == 348  # a NIfTI-1 header
    assert event.value.suggested_filename.endswith(".nii.gz")


def test_a_diffusion_series_downloads_with_its_sidecar_and_gradients(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-a"))
    tab.page.goto(f"{site.url}/web/studies/{study_of(DWI)}")
    with tab.page.expect_download() as event:
        tab.page.click("text=with sidecar (.zip)")
    names = zipfile.ZipFile(io.BytesIO(_saved(event.value))).namelist()
    suffixes = sorted(name.split(".", 1)[1] for name in names)
    assert suffixes == ["bval", "bvec", "json", "nii.gz"], names


def test_a_study_downloads_as_dicom(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-a"))
    tab.page.goto(f"{site.url}/web/studies/{study_of(MR)}")
    with tab.page.expect_download() as event:
        tab.page.click("text=DICOM (.zip)")
    archive = zipfile.ZipFile(io.BytesIO(_saved(event.value)))
    assert len([n for n in archive.namelist() if n.endswith(".dcm")]) == 4


def test_series_without_a_preview_and_failed_conversions_say_so(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-a"))
    page = tab.page
    page.goto(f"{site.url}/?modality=SR")
    page.click("table.studies tbody tr >> nth=0 >> a >> nth=0")
    expect(page.locator(".no-preview")).to_have_count(1)  # a report has no image
    expect(page.locator(".badge.skipped")).to_have_count(1)
    expect(page.locator(".reason")).to_contain_text("no pixel data")
    page.goto(f"{site.url}/?modality=RTDOSE")
    page.click("table.studies tbody tr >> nth=0 >> a >> nth=0")
    expect(page.locator(".badge.failed")).to_have_count(1)
    expect(page.locator(".reason")).to_contain_text("disagrees with the DICOM headers")
    tab.shoot("study-failed")


def test_search_sorts_and_pages_through_every_study_once(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("admin"))
    page = tab.page
    everything = {**site.studies(LAB_A), **site.studies(LAB_B)}
    seen: list[str] = []
    page.goto(f"{site.url}/?sort=study_date&order=asc&limit=3")
    while True:
        links = page.locator("table.studies tbody tr td:nth-child(2) a")
        seen += [h.split("/")[-1] for h in links.evaluate_all("as => as.map(a => a.href)")]
        following = page.locator("a[rel=next]")
        if following.count() == 0:
            break
        following.click()
    assert sorted(seen) == sorted(everything)
    dates = [d for d in _study_dates(site, seen) if d]
    assert dates == sorted(dates)

    page.goto(f"{site.url}/?physician=doe%5Ejane")  # the name as sent, any case
    assert {row.split("\t")[5] for row in _rows(page)} == {LAB_B}
    page.goto(f"{site.url}/?date_from=2016-03-09&date_to=2016-03-09")
    expect(page.locator("table.studies tbody tr")).to_have_count(1)
    page.goto(f"{site.url}/?patient_name=compressedsamples")  # part of the name, any case
    expect(page.locator("table.studies tbody tr")).to_have_count(2)
    page.goto(f"{site.url}/?accession=03028041970546")
    expect(page.locator("table.studies tbody tr")).to_have_count(1)


def _study_dates(site: Site, uids: list[str]) -> list[str]:
    with site.sessions() as session:
        dates = dict(
            session.execute(
                select(Study.study_instance_uid, Study.study_date).where(
                    Study.study_instance_uid.in_(uids)
                )
            ).all()
        )
    return [dates[uid] for uid in uids]


def test_the_pacs_check_fetches_what_is_missing_and_retrievals_show_progress(
    site: Site, tab: Tab
) -> None:
    tab.sign_in(site.url, site.key("admin"))
    page = tab.page
    study = study_of(SHORT)
    page.goto(f"{site.url}/web/studies/{study}")
    page.click("text=Check against the PACS")
    expect(page.locator("p.summary")).to_contain_text("1 instance of 1 series is missing")
    tab.shoot("pacs-check")
    page.click("text=Fetch what is missing")
    expect(page).to_have_url(f"{site.url}/web/retrievals?queued=1")
    row = page.locator("tr[data-job='1']")
    expect(row.locator(".badge")).to_have_text("queued")
    page.evaluate("window.notReloaded = true")

    # The retriever's own steps, as it records them in the catalog.
    assert retrievals.claim(site.sessions, lease=60) == 1
    with site.sessions() as session:
        (progress,) = session.query(RetrievalStudy).filter_by(job_id=1).all()
    retrievals.update_study(site.sessions, progress.id, state=JobState.RUNNING,
                            expected_instances=1, completed=0)  # fmt: skip
    expect(row.locator(".badge")).to_have_text("running")
    retrievals.update_study(site.sessions, progress.id, state=JobState.COMPLETED, completed=1)
    retrievals.finish(site.sessions, 1, JobState.COMPLETED)
    expect(row.locator(".badge")).to_have_text("completed")
    expect(row.locator("[data-field=progress]")).to_contain_text("1 of 1 instances")
    assert page.evaluate("window.notReloaded") is True  # updated in place, by polling
    tab.shoot("retrievals")


def test_storage_and_pins(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("admin"))
    page = tab.page
    page.goto(f"{site.url}/web/storage")
    expect(page.locator("section.disk h2")).to_have_count(3)
    evictions = page.locator("table.evictions tbody tr")
    expect(evictions).to_have_count(len(site.studies(LAB_A)) + len(site.studies(LAB_B)))
    tab.shoot("storage")
    first = evictions.first.locator("a").get_attribute("href")
    evictions.first.locator("button:text('Pin')").click()  # keep it from the eviction
    expect(page).to_have_url(f"{site.url}/web/storage")
    expect(page.locator(f"table.evictions a[href='{first}']")).to_have_count(0)
    page.goto(f"{site.url}/web/pins")
    page.click("table.pins button:text('Unpin')")

    study = study_of(MR)
    page.goto(f"{site.url}/web/studies/{study}")
    page.click(".admin-actions button:text('Pin')")
    expect(page.locator(".admin-actions .badge.pinned")).to_be_visible()
    page.goto(f"{site.url}/web/pins")
    expect(page.locator("table.pins tbody tr")).to_have_count(1)
    tab.shoot("pins")
    page.click("table.pins button:text('Unpin')")
    expect(page).to_have_url(f"{site.url}/web/pins")
    expect(page.locator("table.pins")).to_have_count(0)


def test_a_read_key_gets_no_admin_page(site: Site, tab: Tab) -> None:
    tab.sign_in(site.url, site.key("lab-a"))
    expect(tab.page.locator("header nav a")).to_have_text(["Studies", "Retrievals", "API"])
    for path in ("/web/storage", "/web/pins", f"/web/studies/{study_of(SHORT)}/pacs-check"):
        answer = tab.page.goto(f"{site.url}{path}")
        assert answer is not None and answer.status == 403, path


def test_the_docs_work_offline(site: Site, tab: Tab) -> None:
    """Swagger UI and ReDoc with every request that would leave the host aborted (the tab
    fixture fails the test if any was even tried)."""
    page = tab.page
    answer = page.goto(f"{site.url}/docs")
    assert answer is not None and "default-src 'self'" in answer.headers["content-security-policy"]
    operations = page.locator(".opblock-summary-path")
    expect(operations.first).to_be_visible()
    assert operations.count() >= 20
    expect(operations.filter(has_text="/studies/{study_uid}/archive")).to_be_visible()
    tab.shoot("docs")
    page.goto(f"{site.url}/redoc")
    expect(page.locator("h1", has_text="dcmdb")).to_be_visible()
    expect(page.get_by_text("Get Study Archive").first).to_be_attached()
    tab.shoot("redoc", full_page=False)

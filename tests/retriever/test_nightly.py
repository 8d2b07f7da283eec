"""The nightly retrieval, with dcmqrscp as the PACS: one job per cron slot however many
retrievers run, for exactly the previous day's studies, ending with the completeness check.

The PACS holds copies of test studies re-dated to yesterday and to the day before; the
schedule is every minute so that a slot is due as soon as dcmdb starts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from services.retriever import nightly
from services.retriever.settings import RetrieverSettings
from shared.catalog.database import open_catalog
from shared.catalog.models import RetrievalJob
from tests.conftest import TESTDATA, fresh_vhost
from tests.pacs_peers import Dcmqrscp
from tests.support import wait_for
from tests.system import Dcmdb, dicom_files

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup()]

KEY = "read-key-for-nightly-tests-0123456"
YESTERDAY = (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d")
EARLIER = (dt.date.today() - dt.timedelta(days=2)).strftime("%Y%m%d")


def _redated(folder: str, day: str, out: Path) -> tuple[str, list[Path]]:
    """Copies of a test study with StudyDate `day` (UIDs unchanged)."""
    out.mkdir(parents=True)
    copies = []
    for number, path in enumerate(dicom_files(TESTDATA / folder)):
        ds = pydicom.dcmread(path)
        ds.StudyDate = day
        copy = out / f"{number:04d}.dcm"
        ds.save_as(copy)
        copies.append(copy)
    return str(pydicom.dcmread(copies[0], stop_before_pixels=True).StudyInstanceUID), copies


@pytest.fixture(scope="module")
def night(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Dcmdb, httpx.Client, str, str]]:
    root = tmp_path_factory.mktemp("nightly")
    wanted, wanted_files = _redated("ge_fmri_epi_4d", YESTERDAY, root / "yesterday")
    other, other_files = _redated("d2n_hitachi_mr", EARLIER, root / "earlier")
    vhosts = fresh_vhost()
    dcmdb = Dcmdb(root / "data", next(vhosts), f"sqlite:///{root / 'catalog.sqlite'}")
    with Dcmqrscp(root / "pacs", ("DCMDB", "127.0.0.1", dcmdb.port)) as pacs:
        pacs.fill(wanted_files + other_files)
        dcmdb.extra_env.update(
            {
                "DCMDB_PACS": f"{pacs.ae_title}@127.0.0.1:{pacs.port}",
                "DCMDB_NIGHTLY_RETRIEVE": "* * * * *",
                "DCMDB_STABLE_AGE": "600",
                "DCMDB_POLL_INTERVAL": "0.3",
                "DCMDB_API_KEYS": f"{KEY}:read",
            }
        )
        dcmdb.start("up")
        dcmdb.start("retriever")  # a second retriever on the same catalog
        try:
            dcmdb.wait_until_listening()
            client = httpx.Client(
                base_url=f"http://127.0.0.1:{dcmdb.api_port}",
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=60,
            )
            yield dcmdb, client, wanted, other
            client.close()
        finally:
            dcmdb.stop()
            next(vhosts, None)


def _nightly_jobs(client: httpx.Client) -> list[dict]:
    try:
        answer = client.get("/retrievals", params={"limit": 500})
    except httpx.HTTPError:
        return []
    if answer.status_code != 200:
        return []
    return [job for job in answer.json() if job["origin"] == "nightly"]


def test_the_nightly_run_fetches_yesterdays_studies_once_per_slot(night: tuple) -> None:
    dcmdb, client, wanted, other = night
    wait_for(
        lambda: any(j["state"] == "completed" for j in _nightly_jobs(client)), 240, "a nightly run"
    )
    jobs = _nightly_jobs(client)
    slots = [job["nightly_slot"] for job in jobs]
    assert len(slots) == len(set(slots)), slots  # two retrievers, one job per slot
    done = next(job for job in jobs if job["state"] == "completed")
    assert done["query"] == {"study_date": YESTERDAY}
    assert [s["study_uid"] for s in done["studies"]] == [wanted]
    assert done["gaps"] == []  # the check at the end found nothing missing
    wait_for(
        lambda: client.get(f"/studies/{wanted}").json()["conversion"]["pending"] == 0,
        120,
        "the study's conversion",
    )
    assert client.get(f"/studies/{other}").status_code == 404  # another day's study


def test_each_slot_gets_one_job_and_a_missed_slot_runs_within_the_grace(tmp_path: Path) -> None:
    settings = RetrieverSettings(
        data_dir=tmp_path, pacs="PACS@127.0.0.1:104", nightly_retrieve="0 1 * * *"
    )
    engine, sessions = open_catalog(settings.catalog_url, writer=True)
    try:
        night_of_the_3rd = dt.datetime(2026, 3, 3, 1, 0, 0)
        first = nightly.schedule(settings, sessions, night_of_the_3rd)
        assert first is not None
        assert nightly.schedule(settings, sessions, night_of_the_3rd) is None  # same slot
        # Down from 00:30 to 09:00: the 01:00 slot runs at 09:00, once.
        assert nightly.schedule(settings, sessions, dt.datetime(2026, 3, 4, 9, 0)) is not None
        assert nightly.schedule(settings, sessions, dt.datetime(2026, 3, 4, 9, 1)) is None
        # Back only after the grace (12 h by default): that night is skipped.
        assert nightly.schedule(settings, sessions, dt.datetime(2026, 3, 5, 13, 30)) is None
        with sessions() as session:
            jobs = session.scalars(select(RetrievalJob).order_by(RetrievalJob.id)).all()
            assert [(j.nightly_slot, json.loads(j.query)) for j in jobs] == [
                ("2026-03-03T01:00", {"study_date": "20260302"}),
                ("2026-03-04T01:00", {"study_date": "20260303"}),
            ]
    finally:
        engine.dispose()


def test_a_bad_schedule_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="DCMDB_NIGHTLY_RETRIEVE"):
        RetrieverSettings(data_dir=tmp_path, nightly_retrieve="at one every night")

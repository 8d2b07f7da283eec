"""Retrievals with real PACS peers: DCMTK dcmqrscp and Orthanc hold the test data, and
``dcmdb up`` (with the retriever) fetches studies from them into its own receiver.

The stable age is ten minutes here: a retrieved series can only complete in time because
the PACS said how many instances it holds.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.conftest import REPO, TESTDATA, fresh_vhost
from tests.pacs_peers import Dcmqrscp, Orthanc
from tests.support import add_key, finished_job, wait_for
from tests.system import Dcmdb, dicom_files, send_dicom

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup()]

ADMIN = "admin-key-for-retrieval-tests-0123"
READ = "read-key-for-retrieval-tests-01234"
ON_DCMQRSCP = ("ge_fmri_epi_4d", "d2n_hitachi_mr", "siemens_xa30_t1w_3d_classic")
ON_ORTHANC = ("d2n_ct_missing_slice", "d2n_mr_4slice_jpeg")
UNKNOWN_LAB = "unknown"  # the lab of studies without a referring physician, as these are
OTHER_LAB = "SMITH_JOHN"


def _study(folder: str) -> tuple[str, list[Path]]:
    files = dicom_files(TESTDATA / folder)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    assert len(uids) == 1, folder
    return uids.pop(), files


@dataclass
class Site:
    dcmdb: Dcmdb
    pacs: Dcmqrscp
    orthanc: Orthanc
    client: httpx.Client
    lab_keys: dict[str, str]  # lab folder: a key of that lab alone

    def post(self, path: str, key: str = ADMIN, **body: Any) -> httpx.Response:
        return self.client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

    def get(self, path: str, key: str = READ, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params, headers={"Authorization": f"Bearer {key}"})

    def finished(self, job_id: int, timeout: float = 180) -> dict[str, Any]:
        return finished_job(lambda: self.get(f"/retrievals/{job_id}").json(), timeout)

    def study(self, uid: str) -> dict[str, Any] | None:
        answer = self.get(f"/studies/{uid}")
        return answer.json() if answer.status_code == 200 else None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("retrieval")
    vhosts = fresh_vhost()
    dcmdb = Dcmdb(root / "data", next(vhosts), f"sqlite:///{root / 'catalog.sqlite'}")
    destination = ("DCMDB", "127.0.0.1", dcmdb.port)
    pacs = Dcmqrscp(root / "dcmqrscp", destination)
    orthanc = Orthanc(root / "orthanc", destination)
    with pacs, orthanc:
        pacs.fill([f for folder in ON_DCMQRSCP for f in _study(folder)[1]])
        orthanc.fill([f for folder in ON_ORTHANC for f in _study(folder)[1]])
        peers_file = root / "peers.yaml"  # Orthanc once more, by C-GET this time
        peers_file.write_text(
            f"- {{name: ORTHANC-GET, ae_title: {orthanc.ae_title}, host: 127.0.0.1,"
            f" port: {orthanc.port}, retrieve: get}}\n"
        )
        dcmdb.extra_env.update(
            {
                "DCMDB_PACS": f"{pacs.ae_title}@127.0.0.1:{pacs.port},"
                f"{orthanc.ae_title}@127.0.0.1:{orthanc.port}",
                "DCMDB_PACS_FILE": str(peers_file),
                "DCMDB_NIGHTLY_RETRIEVE": "",
                "DCMDB_STABLE_AGE": "600",
                "DCMDB_POLL_INTERVAL": "0.3",
                "DCMDB_API_KEYS": f"{READ}:read,{ADMIN}:admin",
            }
        )
        keys_file = dcmdb.data_dir / "keys.yaml"
        lab_keys = {
            lab: add_key(keys_file, f"lab-{lab}", [lab]) for lab in (UNKNOWN_LAB, OTHER_LAB)
        }
        dcmdb.start("up")
        try:
            dcmdb.wait_until_listening()
            client = httpx.Client(base_url=f"http://127.0.0.1:{dcmdb.api_port}", timeout=120)
            dcmdb.wait_until_api_answers()
            yield Site(dcmdb, pacs, orthanc, client, lab_keys)
            client.close()
        finally:
            dcmdb.stop()
            next(vhosts, None)


def _converted(site: Site, uid: str) -> bool:
    study = site.study(uid)
    return study is not None and study["conversion"]["pending"] == 0


def test_a_retrieved_study_is_filed_whole_and_converted_without_waiting(site: Site) -> None:
    uid, files = _study("ge_fmri_epi_4d")
    answer = site.post("/retrievals", study_uid=uid)
    assert answer.status_code == 202, answer.text
    job = site.finished(answer.json()["id"])
    assert job["state"] == "completed", job
    [progress] = job["studies"]
    assert progress["study_uid"] == uid and progress["state"] == "completed"
    assert progress["expected_instances"] == len(files)  # counted at IMAGE level: dcmqrscp
    assert progress["completed"] == len(files) and progress["failed"] == 0
    # Complete because the expected count was reached: the stable age is ten minutes.
    wait_for(lambda: _converted(site, uid), 120, "the retrieved series converted")
    study = site.study(uid)
    assert study is not None and study["instance_count"] == len(files)
    assert all(s["completion"] == "complete" for s in study["series"])
    assert site.finished(answer.json()["id"])["studies"][0]["filed"] == len(files)


def test_a_study_already_whole_is_not_fetched_again(site: Site) -> None:
    uid, _files = _study("ge_fmri_epi_4d")
    wait_for(lambda: site.study(uid) is not None, 120, "the study filed")
    job = site.finished(site.post("/retrievals", study_uid=uid).json()["id"])
    assert job["state"] == "completed"
    assert job["studies"][0]["state"] == "already complete"
    assert job["studies"][0]["completed"] == 0


def test_a_retrieval_by_date_fetches_exactly_that_days_studies(site: Site) -> None:
    uid, files = _study("d2n_hitachi_mr")
    day = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyDate)
    others = {_study(f)[0] for f in ON_DCMQRSCP} - {uid}
    others_dates = {
        str(pydicom.dcmread(_study(f)[1][0], stop_before_pixels=True).StudyDate)
        for f in ON_DCMQRSCP
        if _study(f)[0] != uid
    }
    assert day not in others_dates
    job = site.finished(site.post("/retrievals", study_date=day).json()["id"])
    assert job["state"] == "completed", job
    assert [s["study_uid"] for s in job["studies"]] == [uid]
    assert job["query"] == {"study_date": day}
    wait_for(lambda: _converted(site, uid), 120, "the study converted")
    for other in others - {_study("ge_fmri_epi_4d")[0]}:
        assert site.study(other) is None


def test_the_check_finds_what_is_missing_and_the_repair_moves_only_that(site: Site) -> None:
    uid, files = _study("siemens_xa30_t1w_3d_classic")
    half = files[: len(files) // 2]
    send_dicom(site.dcmdb.port, half)  # a transfer that broke off half way
    wait_for(lambda: (site.study(uid) or {}).get("instance_count") == len(half), 120, "half filed")
    check = site.get(f"/studies/{uid}/pacs-check").json()
    assert check["complete"] is False
    assert check["missing_instances"] == len(files) - len(half)
    assert [s["pacs_instances"] for s in check["series"]] == [len(files)]
    answer = site.post(f"/studies/{uid}/repair")
    assert answer.status_code == 202, answer.text
    job = site.finished(answer.json()["id"])
    assert job["state"] == "completed" and job["origin"] == "repair", job
    assert job["studies"][0]["series_uids"] == check["missing_series"]
    wait_for(lambda: site.get(f"/studies/{uid}/pacs-check").json()["complete"], 120, "repaired")
    assert site.post(f"/studies/{uid}/repair").status_code == 409  # nothing left to do


def test_a_second_pacs_by_name(site: Site) -> None:
    uid, files = _study("d2n_ct_missing_slice")
    job = site.finished(site.post("/retrievals", study_uid=uid, pacs="ORTHANC").json()["id"])
    assert job["state"] == "completed" and job["pacs"] == "ORTHANC", job
    assert job["studies"][0]["expected_instances"] == len(files)  # Orthanc gives counts
    wait_for(lambda: (site.study(uid) or {}).get("instance_count") == len(files), 120, "filed")


def test_c_get_hands_every_instance_to_the_receiver(site: Site) -> None:
    uid, files = _study("d2n_mr_4slice_jpeg")  # JPEG lossless: the PACS may transcode it
    job = site.finished(site.post("/retrievals", study_uid=uid, pacs="ORTHANC-GET").json()["id"])
    assert job["state"] == "completed", job
    assert job["studies"][0]["completed"] == len(files)
    wait_for(lambda: (site.study(uid) or {}).get("instance_count") == len(files), 120, "filed")
    filed = list((site.dcmdb.data_dir / "archive").rglob("*.dcm"))
    for path in files:
        original = pydicom.dcmread(path)
        [copy] = [p for p in filed if p.name.startswith(str(original.SOPInstanceUID))]
        assert (pydicom.dcmread(copy).pixel_array == original.pixel_array).all()


def test_nothing_matching_is_a_completed_empty_job(site: Site) -> None:
    job = site.finished(site.post("/retrievals", patient_id="NOBODY-0000").json()["id"])
    assert job["state"] == "completed" and job["studies"] == []


def test_requests_are_checked_before_any_job_exists(site: Site) -> None:
    before = len(site.get("/retrievals", limit=500).json())
    other = site.post("/retrievals", referring_physician="Doe^Jane", key=site.lab_keys[UNKNOWN_LAB])
    assert other.status_code == 422 and "unknown only" in other.text
    assert site.post("/retrievals").status_code == 422
    bad_date = site.post("/retrievals", study_date="20241301")
    assert bad_date.status_code == 422 and "study_date" in bad_date.text
    unknown = site.post("/retrievals", study_uid="1.2.3", pacs="NOSUCH")
    assert unknown.status_code == 422 and "DCMQRSCP" in unknown.text
    extra = site.post("/retrievals", study_uid="1.2.3", destination="EVIL")
    assert extra.status_code == 422  # the move destination is never a request's to choose
    assert len(site.get("/retrievals", limit=500).json()) == before


def test_cancelling(site: Site) -> None:
    assert (
        site.client.delete(
            "/retrievals/999999", headers={"Authorization": f"Bearer {ADMIN}"}
        ).status_code
        == 404
    )
    job = site.post("/retrievals", patient_id="NOBODY-0001").json()
    answer = site.client.delete(
        f"/retrievals/{job['id']}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert answer.status_code == 202
    assert site.finished(job["id"])["state"] in ("cancelled", "completed")


def test_an_unknown_study_is_404_for_the_check(site: Site) -> None:
    answer = site.get("/studies/1.2.3.4.5.6/pacs-check")
    assert answer.status_code == 404


def test_yesterday_in_a_request_is_a_dicom_date(site: Site) -> None:
    yesterday = (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d")
    job = site.finished(site.post("/retrievals", study_date="yesterday").json()["id"])
    assert job["query"] == {"study_date": yesterday}


def _dcmdb(site: Site, *argv: str, key: str = ADMIN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.commands.cli",
            *argv,
            "--url",
            str(site.client.base_url),
            "--key",
            key,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_retrieve_and_pacs_check_commands(site: Site) -> None:
    uid, files = _study("d2n_ct_missing_slice")
    done = _dcmdb(site, "retrieve", "--study-uid", uid, "--pacs", "ORTHANC")
    assert done.returncode == 0, done.stderr
    # Moved now, or found whole when an earlier test fetched it already.
    moved = re.search(
        r"completed: 1/1 studies, (\d+)/(\d+) instances moved, (\d+) filed", done.stdout
    )
    assert moved is not None, done.stdout
    assert moved.group(1) in ("0", str(len(files))) and moved.group(2, 3) == (str(len(files)),) * 2
    wait_for(lambda: (site.study(uid) or {}).get("instance_count") == len(files), 120, "filed")
    check = _dcmdb(site, "pacs-check", uid, "--pacs", "ORTHANC", key=READ)
    assert check.returncode == 0, check.stderr
    assert "complete on ORTHANC" in check.stdout
    unknown = _dcmdb(site, "pacs-check", "1.2.3.4.5.6.7", key=READ)
    assert unknown.returncode == 1 and "404" in unknown.stderr
    elsewhere = _dcmdb(site, "retrieve", "--study-uid", uid, key=site.lab_keys[OTHER_LAB])
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "completed: 0/0 studies" in elsewhere.stdout  # found, but of another lab


def test_a_lab_retrieves_its_own_studies_and_follows_only_its_jobs(site: Site) -> None:
    uid, files = _study("d2n_mr_4slice_jpeg")
    own = site.post("/retrievals", study_uid=uid, pacs="ORTHANC", key=site.lab_keys[UNKNOWN_LAB])
    assert own.status_code == 202, own.text
    job = site.finished(own.json()["id"])
    assert job["state"] == "completed" and [s["study_uid"] for s in job["studies"]] == [uid]
    other_key = site.lab_keys[OTHER_LAB]
    assert site.get(f"/retrievals/{job['id']}", key=other_key).status_code == 404
    assert (
        site.client.delete(
            f"/retrievals/{job['id']}", headers={"Authorization": f"Bearer {other_key}"}
        ).status_code
        == 404
    )
    assert job["id"] not in [j["id"] for j in site.get("/retrievals", key=other_key).json()]
    assert job["id"] in [j["id"] for j in site.get("/retrievals", key=ADMIN).json()]
    # The study is the unknown lab's: the other lab's key cannot even learn the PACS has it.
    assert site.get(f"/studies/{uid}/pacs-check", pacs="ORTHANC", key=other_key).status_code == 404
    check = site.get(f"/studies/{uid}/pacs-check", pacs="ORTHANC", key=site.lab_keys[UNKNOWN_LAB])
    assert check.status_code == 200 and check.json()["complete"]

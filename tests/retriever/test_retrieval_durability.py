"""A retrieval's instances are answered before their sync and made durable at the job's end.

With real PACS peers (DCMTK's dcmqrscp and Orthanc, by C-MOVE and by C-GET) and ``dcmdb
up``: every instance a job brings is noted unsynced until the job's one sync; a receiver
killed mid-job, and a power cut mid-job, end with a job that finds on disk what is missing
and fetches it again. A power cut is simulated: the services that write killed at once, and the
files noted unsynced (`shared.unsynced`) deleted, wherever the sorter had filed them.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from shared.unsynced import UnsyncedFiles
from tests.conftest import TESTDATA, fresh_vhost
from tests.pacs_peers import Dcmqrscp, Orthanc
from tests.support import finished_job, wait_for
from tests.system import Dcmdb, catalog, dicom_files

pytestmark = [pytest.mark.e2e]

ADMIN = "admin-key-for-durability-tests-01"
ON_PACS = (
    "siemens_xa30_t1w_3d_classic",
    "ge_fmri_epi_4d",
    "ge_3plane_localizer",
    "d2n_hitachi_mr",
    "d2n_ct_missing_slice",
)
ON_ORTHANC = ("siemens_vb17_mosaic_axasc35", "d2n_mr_4slice_jpeg")
GE_EXAM = ("ge_fmri_epi_4d", "ge_3plane_localizer")  # two folders of one study


def _files(folders: tuple[str, ...]) -> list[Path]:
    return [f for folder in folders for f in dicom_files(TESTDATA / folder)]


def _study_uid(folder: str) -> str:
    return str(pydicom.dcmread(dicom_files(TESTDATA / folder)[0]).StudyInstanceUID)


def _expected(folders: tuple[str, ...]) -> dict[str, int]:
    """Instances per study (two folders of the GE exam are one study)."""
    counts: dict[str, int] = {}
    for folder in folders:
        uid = _study_uid(folder)
        counts[uid] = counts.get(uid, 0) + len(dicom_files(TESTDATA / folder))
    return counts


@dataclass
class Site:
    dcmdb: Dcmdb
    client: httpx.Client

    def retrieve(self, **body: Any) -> int:
        answer = self.client.post("/retrievals", json=body)
        assert answer.status_code == 202, answer.text
        return int(answer.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        return self.client.get(f"/retrievals/{job_id}").json()  # type: ignore[no-any-return]

    def finished(self, job_id: int) -> dict[str, Any]:
        return finished_job(lambda: self.job(job_id), 300)

    def filed(self) -> int:
        return len(catalog(self.dcmdb.database_url)[1])

    def on_disk(self) -> dict[str, int]:
        """Instances per study whose file is in the archive with the size the catalog says."""
        archive = self.dcmdb.data_dir / "archive"
        studies = {s.pk: s.study_uid for s in _studies(self.dcmdb.database_url)}
        series, instances = catalog(self.dcmdb.database_url)
        study_of = {s.id: studies[s.study_pk] for s in series}
        held: dict[str, int] = {}
        for instance in instances:
            path = archive / instance.path
            if path.exists() and path.stat().st_size == instance.size:
                uid = study_of[instance.series_pk]
                held[uid] = held.get(uid, 0) + 1
        return held

    def pid(self, service: str) -> int:
        found = subprocess.run(
            ["pgrep", "-f", f"services.commands.cli {service}$"], capture_output=True, text=True
        ).stdout.split()
        ours = [int(p) for p in found if _environment_has(int(p), str(self.dcmdb.data_dir))]
        assert len(ours) == 1, (service, found)
        return ours[0]


@dataclass(frozen=True)
class _Study:
    pk: int
    study_uid: str


def _studies(url: str) -> list[_Study]:
    from sqlalchemy import create_engine, select

    from shared.catalog.models import Study

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Study.id, Study.study_instance_uid)).all()
    finally:
        engine.dispose()
    return [_Study(pk, uid) for pk, uid in rows]


def _environment_has(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    vhosts = fresh_vhost()
    dcmdb = Dcmdb(tmp_path / "data", next(vhosts), f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    destination = ("DCMDB", "127.0.0.1", dcmdb.port)
    pacs = Dcmqrscp(tmp_path / "dcmqrscp", destination)
    orthanc = Orthanc(tmp_path / "orthanc", destination)
    with pacs, orthanc:
        pacs.fill(_files(ON_PACS))
        orthanc.fill(_files(ON_ORTHANC))
        peers_file = tmp_path / "peers.yaml"
        peers_file.write_text(
            f"- {{name: DCMQRSCP, ae_title: {pacs.ae_title}, host: 127.0.0.1, port: {pacs.port}}}\n"
            f"- {{name: ORTHANC, ae_title: {orthanc.ae_title}, host: 127.0.0.1,"
            f" port: {orthanc.port}}}\n"
            f"- {{name: ORTHANC-GET, ae_title: {orthanc.ae_title}, host: 127.0.0.1,"
            f" port: {orthanc.port}, retrieve: get}}\n"
        )
        dcmdb.extra_env.update(
            {
                "DCMDB_PACS_FILE": str(peers_file),
                "DCMDB_NIGHTLY_RETRIEVE": "",
                "DCMDB_STABLE_AGE": "600",
                "DCMDB_POLL_INTERVAL": "0.2",
                "DCMDB_JOB_LEASE": "3",
                "DCMDB_API_KEYS": f"{ADMIN}:admin",
            }
        )
        dcmdb.start("up")
        try:
            dcmdb.wait_until_listening()
            dcmdb.wait_until_api_answers()
            with httpx.Client(
                base_url=f"http://127.0.0.1:{dcmdb.api_port}",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=120,
            ) as client:
                yield Site(dcmdb, client)
        finally:
            dcmdb.stop()
            next(vhosts, None)


def test_a_jobs_instances_are_synced_at_once_at_its_end(site: Site) -> None:
    unsynced = UnsyncedFiles(site.dcmdb.data_dir)
    jobs = [
        site.retrieve(study_uid=_study_uid("ge_3plane_localizer"), pacs="DCMQRSCP"),
        site.retrieve(study_uid=_study_uid(ON_ORTHANC[0]), pacs="ORTHANC"),
        site.retrieve(study_uid=_study_uid(ON_ORTHANC[1]), pacs="ORTHANC-GET"),
    ]
    for job_id in jobs:
        job = site.finished(job_id)
        assert job["state"] == "completed", job
    assert unsynced.marked() == []  # the end of each job made it durable
    expected = _expected((*GE_EXAM, *ON_ORTHANC))
    on_disk = site.on_disk()
    assert {uid: on_disk.get(uid, 0) for uid in expected} == expected
    log = site.dcmdb.log()
    # Every instance answered before its sync, by each PACS and by C-GET.
    for folders in (GE_EXAM, ON_ORTHANC[:1], ON_ORTHANC[1:]):
        count = sum(_expected(folders).values())
        assert f": {count} instance(s) synced at once" in log, (folders, log[-3000:])


def test_a_receiver_killed_mid_job_ends_in_a_job_that_fetches_what_is_missing(
    site: Site,
) -> None:
    expected = _expected(ON_PACS)
    unsynced = UnsyncedFiles(site.dcmdb.data_dir)
    receiver = site.pid("receiver")
    job_id = site.retrieve(study_date="19000101-29991231", pacs="DCMQRSCP")
    # In the middle of the first move: some of its instances are here, most are to come.
    wait_for(lambda: len(unsynced.marked()) >= 5, 120, "the first instances", interval=0.005)
    os.kill(receiver, signal.SIGKILL)
    job = site.finished(job_id)
    assert job["state"] == "completed", job
    assert site.on_disk() == expected
    assert "incomplete on disk; fetching what is missing" in site.dcmdb.log()
    assert "receiver exited with code -9; restarting" in site.dcmdb.log()


def test_a_power_cut_mid_job_ends_in_a_job_that_fetches_what_was_lost(site: Site) -> None:
    expected = _expected(ON_PACS)
    data = site.dcmdb.data_dir
    unsynced = UnsyncedFiles(data)
    job_id = site.retrieve(study_date="19000101-29991231", pacs="DCMQRSCP")
    # A study moved whole, not yet made durable: the job's end is all that can find it lost.
    wait_for(
        lambda: (
            any(s["state"] == "completed" for s in site.job(job_id)["studies"])
            and site.filed() >= 20
            and unsynced.marked()
        ),
        120,
        "a study moved and filed",
        interval=0.01,
    )
    for service in ("retriever", "receiver", "sorter"):  # the retriever first: no sync
        os.kill(site.pid(service), signal.SIGKILL)
    assert site.job(job_id)["state"] == "running"
    lost = _lose_unsynced(data, unsynced)
    assert lost > 0  # filed into the archive, and gone
    job = site.finished(job_id)
    assert job["state"] == "completed", job
    assert job["attempts"] >= 2, job  # taken over after the lease ran out
    assert site.on_disk() == expected
    assert unsynced.marked() == []
    assert "were not on disk; fetching again" in site.dcmdb.log()


def _lose_unsynced(data: Path, unsynced: UnsyncedFiles) -> int:
    """What a power cut takes: each file noted unsynced, under every name it has; how many
    of them the sorter had filed into the archive."""
    archive = data / "archive"
    by_name = {p.name: p for p in archive.rglob("*.dcm")}
    lost = 0
    for marker in unsynced.marked():
        uid = str(pydicom.dcmread(marker, stop_before_pixels=True).SOPInstanceUID)
        filed = by_name.get(f"{uid}.dcm")
        if filed is not None and filed.stat().st_ino == marker.stat().st_ino:
            filed.unlink()
            lost += 1
        (data / "incoming" / marker.name).unlink(missing_ok=True)
        marker.unlink()
    return lost

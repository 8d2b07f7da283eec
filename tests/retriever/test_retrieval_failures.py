"""Retrievals when things go wrong, with real peers: a PACS that is down, a PACS that does
not know dcmdb as a move destination (0xA801), a receiver that cannot be reached when the
PACS starts moving, a move that loses an instance (partial, then repaired), a job
cancelled while it runs, and a retriever killed in the middle of a job (``dcmdb up``
restarts it; the job is taken over once its lease runs out).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from services.retriever.settling import ROUNDS
from tests.conftest import TESTDATA, fresh_vhost
from tests.pacs_peers import Dcmqrscp
from tests.support import finished_job, free_port, wait_for
from tests.system import Dcmdb, dicom_files

pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup()]

ADMIN = "admin-key-for-failure-tests-012345"
FOLDERS = (
    "ge_fmri_epi_4d",
    "d2n_hitachi_mr",
    "siemens_xa30_t1w_3d_classic",
    "d2n_ct_missing_slice",
    "siemens_vb17_mosaic_axasc35",
    "ge_3plane_localizer",
)

DOORWAY = ("d2n_hitachi_mr", "d2n_ct_gantry_tilt")  # studies of the PACS moving through the door


def _uid(folder: str) -> str:
    return str(pydicom.dcmread(dicom_files(TESTDATA / folder)[0]).StudyInstanceUID)


class Door:
    """A TCP relay to dcmdb's receiver that closes the next `closing` connections at once,
    as a receiver that is restarting (or not yet started) does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.closing = 0
        self.closed = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self._listener.accept()
            except OSError:
                return
            if self.closing > 0:
                self.closing -= 1
                self.closed += 1
                peer.close()
                continue
            target = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((peer, target), (target, peer)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@dataclass
class Site:
    dcmdb: Dcmdb
    pacs: Dcmqrscp
    client: httpx.Client
    door: Door  # what the PACS called DOORWAY moves through

    def post(self, path: str, **body: Any) -> dict[str, Any]:
        answer = self.client.post(path, json=body)
        assert answer.status_code == 202, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def job(self, job_id: int) -> dict[str, Any]:
        return self.client.get(f"/retrievals/{job_id}").json()  # type: ignore[no-any-return]

    def finished(self, job_id: int, timeout: float = 240) -> dict[str, Any]:
        return finished_job(lambda: self.job(job_id), timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("failures")
    vhosts = fresh_vhost()
    dcmdb = Dcmdb(root / "data", next(vhosts), f"sqlite:///{root / 'catalog.sqlite'}")
    pacs = Dcmqrscp(root / "pacs", ("DCMDB", "127.0.0.1", dcmdb.port))
    stranger = Dcmqrscp(root / "stranger", ("SOMEONE", "127.0.0.1", dcmdb.port), "STRANGER")
    door = Door(dcmdb.port)
    doorway = Dcmqrscp(root / "doorway", ("DCMDB", "127.0.0.1", door.port), "DOORWAY")
    with pacs, stranger, doorway, contextlib.closing(door):
        pacs.fill([f for folder in FOLDERS for f in dicom_files(TESTDATA / folder)])
        stranger.fill(dicom_files(TESTDATA / "d2n_hitachi_mr"))
        doorway.fill([f for folder in DOORWAY for f in dicom_files(TESTDATA / folder)])
        dcmdb.extra_env.update(
            {
                "DCMDB_PACS": f"DCMQRSCP@127.0.0.1:{pacs.port},"
                f"STRANGER@127.0.0.1:{stranger.port},DOWN@127.0.0.1:{free_port()},"
                f"DOORWAY@127.0.0.1:{doorway.port}",
                "DCMDB_NIGHTLY_RETRIEVE": "",
                "DCMDB_STABLE_AGE": "600",
                "DCMDB_POLL_INTERVAL": "0.2",
                "DCMDB_JOB_LEASE": "3",
                "DCMDB_PACS_ATTEMPTS": "2",
                "DCMDB_PACS_RETRY_DELAY": "0.2",
                "DCMDB_API_KEYS": f"{ADMIN}:admin",
            }
        )
        dcmdb.start("up")
        try:
            dcmdb.wait_until_listening()
            client = httpx.Client(
                base_url=f"http://127.0.0.1:{dcmdb.api_port}",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=120,
            )
            dcmdb.wait_until_api_answers()
            yield Site(dcmdb, pacs, client, door)
            client.close()
        finally:
            dcmdb.stop()
            next(vhosts, None)


def test_a_pacs_that_is_down_is_tried_again_then_fails_the_job_with_the_reason(
    site: Site,
) -> None:
    job = site.finished(site.post("/retrievals", study_uid="1.2.3", pacs="DOWN")["id"])
    assert job["state"] == "failed"
    assert "unreachable" in job["reason"] and "after 2 attempts" in job["reason"]


def test_a_pacs_that_does_not_know_dcmdb_fails_the_study_with_0xa801(site: Site) -> None:
    uid = _uid("d2n_hitachi_mr")
    job = site.finished(site.post("/retrievals", study_uid=uid, pacs="STRANGER")["id"])
    assert job["state"] == "failed", job
    [study] = job["studies"]
    assert study["state"] == "failed" and "0xA801" in study["reason"], study
    assert "0xA801" in job["reason"]


def test_a_move_that_cannot_reach_the_receiver_is_asked_again(site: Site) -> None:
    """The PACS fails every sub-operation (0xA702) when dcmdb's receiver is away, as during
    a restart at 1 AM; the retriever asks again and the study comes whole."""
    folder = DOORWAY[0]
    site.door.closing = 1
    job = site.finished(site.post("/retrievals", study_uid=_uid(folder), pacs="DOORWAY")["id"])
    assert site.door.closed == 1
    assert job["state"] == "completed", job
    [study] = job["studies"]
    assert study["completed"] == len(dicom_files(TESTDATA / folder)), study
    assert "failed to arrive (0xA702); nothing arrived); trying again" in site.dcmdb.log()


def test_a_receiver_that_stays_away_fails_the_study_with_the_reason(site: Site) -> None:
    # Both attempts the fixture allows, at the first move and at each fetch of what is
    # missing at the job's end.
    site.door.closing = 2 * ROUNDS
    uid = _uid(DOORWAY[1])
    job = site.finished(site.post("/retrievals", study_uid=uid, pacs="DOORWAY")["id"])
    assert job["state"] == "failed", job
    [study] = job["studies"]
    assert "0xA702" in study["reason"] and "after 2 attempts" in study["reason"], study


def _pacs_copy(site: Site, sop_instance_uid: str) -> Path:
    for path in (site.pacs.folder / "db").rglob("*"):
        if path.is_file() and path.name not in ("index.dat",):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - the index and other files of dcmqrscp
                continue
            if ds.SOPInstanceUID == sop_instance_uid:
                return path
    raise AssertionError(f"{sop_instance_uid} not in the PACS storage")


def test_a_move_that_loses_an_instance_is_partial_and_repair_fills_the_gap(site: Site) -> None:
    whole, broken = "d2n_ct_missing_slice", "ge_fmri_epi_4d"
    lost = str(pydicom.dcmread(dicom_files(TESTDATA / broken)[7]).SOPInstanceUID)
    stored = _pacs_copy(site, lost)
    aside = stored.with_suffix(".aside")
    shutil.move(stored, aside)  # the PACS lists the instance but cannot send it
    try:
        job = site.finished(_two_study_job(site, whole, broken))
    finally:
        shutil.move(aside, stored)
    assert job["state"] == "partial", job
    by_uid = {s["study_uid"]: s for s in job["studies"]}
    assert by_uid[_uid(whole)]["state"] == "completed"
    assert by_uid[_uid(broken)]["state"] == "failed" and by_uid[_uid(broken)]["failed"] >= 1
    check = site.client.get(f"/studies/{_uid(broken)}/pacs-check").json()
    wait_for(
        lambda: (
            site.client.get(f"/studies/{_uid(broken)}/pacs-check").json()["missing_instances"] == 1
        ),
        60,
        "the gap seen by the check",
    )
    repair = site.finished(site.post(f"/studies/{_uid(broken)}/repair")["id"])
    assert repair["state"] == "completed", repair
    assert check["study_uid"] == _uid(broken)
    wait_for(
        lambda: site.client.get(f"/studies/{_uid(broken)}/pacs-check").json()["complete"],
        60,
        "the study whole",
    )


def _two_study_job(site: Site, *folders: str) -> int:
    """One job for these studies (and any other of the PACS between their dates)."""
    dates = sorted(str(pydicom.dcmread(dicom_files(TESTDATA / f)[0]).StudyDate) for f in folders)
    job = site.post("/retrievals", study_date=f"{dates[0]}-{dates[-1]}")
    return int(job["id"])


def test_a_job_cancelled_while_it_runs_stops(site: Site) -> None:
    job = site.post("/retrievals", study_date="19000101-29991231")
    wait_for(lambda: site.job(job["id"])["state"] == "running", 60, "the job running")
    answer = site.client.delete(f"/retrievals/{job['id']}")
    assert answer.status_code == 202
    assert answer.json()["cancel_requested"] is True
    ended = site.finished(job["id"])
    assert ended["state"] == "cancelled", ended
    assert any(s["state"] in ("cancelled", "queued") for s in ended["studies"]), ended


def _retriever_pid(site: Site) -> int:
    found = subprocess.run(
        ["pgrep", "-f", "services.commands.cli retriever"], capture_output=True, text=True
    ).stdout.split()
    ours = [int(pid) for pid in found if _environment_has(int(pid), str(site.dcmdb.data_dir))]
    assert len(ours) == 1, found
    return ours[0]


def _environment_has(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def test_a_retriever_killed_mid_job_is_restarted_and_the_job_taken_over(site: Site) -> None:
    job = site.post("/retrievals", study_date="19000101-29991231")
    wait_for(lambda: site.job(job["id"])["state"] == "running", 60, "the job running")
    os.kill(_retriever_pid(site), signal.SIGKILL)
    ended = site.finished(job["id"])
    assert ended["state"] == "completed", ended
    assert ended["attempts"] >= 2  # claimed again after the lease ran out
    expected: dict[str, int] = {}
    for folder in FOLDERS:  # two of the folders are one study (a GE exam)
        expected[_uid(folder)] = expected.get(_uid(folder), 0) + len(dicom_files(TESTDATA / folder))
    try:
        wait_for(lambda: {uid: _filed(site, uid) for uid in expected} == expected, 120, "all filed")
    except AssertionError:
        filed = {uid: _filed(site, uid) for uid in expected}
        raise AssertionError(f"expected {expected}, filed {filed}; job {ended}") from None
    assert "retriever exited with code -9; restarting" in site.dcmdb.log()


def _filed(site: Site, uid: str) -> int:
    answer = site.client.get(f"/studies/{uid}")
    return answer.json()["instance_count"] if answer.status_code == 200 else 0

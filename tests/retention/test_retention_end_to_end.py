"""Retention as a user runs it: ``dcmdb up`` on a small real disk, studies sent with storescu,
the disk filled, the dry run of GET /storage, then a retention process doing just that."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from shared.disk import disk_usage
from tests.arrivals import with_new_uids
from tests.support import SLOW_POLL, wait_for
from tests.system import Dcmdb, dicom_files, send_dicom, small_filesystem

pytestmark = pytest.mark.e2e

KEY = "retention-admin-key-0123456789"
MIB = 1024**2
LOW, TARGET = 4 * MIB, 4 * MIB + 100 * 1024  # about two studies of 60 KB to go
SERIES = "d2n_hitachi_mr"


@pytest.fixture
def system(tmp_path: Path, broker_url: str) -> Iterator[Dcmdb]:
    dcmdb = Dcmdb(
        tmp_path / "data",
        broker_url,
        f"sqlite:///{tmp_path / 'catalog.sqlite'}",  # beside the small disk, not on it
        extra_env={
            "DCMDB_STABLE_AGE": "1",
            "DCMDB_API_KEYS": f"{KEY}:admin",
            "DCMDB_MIN_FREE": "1MiB",
            "DCMDB_RETENTION_LOW_FREE": str(LOW),
            "DCMDB_RETENTION_TARGET_FREE": str(TARGET),
            "DCMDB_RETENTION_INTERVAL": "3600",  # the retention of `up` runs at its start only
        },
    )
    with small_filesystem(dcmdb.data_dir, "16m"):
        dcmdb.start("up")
        try:
            dcmdb.wait_until_listening()
            yield dcmdb
        finally:
            dcmdb.stop()


def make_studies(testdata: Path, target: Path, count: int) -> list[tuple[str, Path]]:
    """`count` studies, each the small series under new UIDs in a folder of its own."""
    studies = []
    for number in range(count):
        study, series = generate_uid(), generate_uid()
        folder = target / f"study{number}"
        folder.mkdir(parents=True)
        for index, path in enumerate(dicom_files(testdata / SERIES)):
            (folder / f"{index}.dcm").write_bytes(with_new_uids(path, study=study, series=series))
        studies.append((study, folder))
    return studies


def test_the_oldest_unpinned_studies_go_as_the_dry_run_said(
    system: Dcmdb, testdata: Path, tmp_path: Path
) -> None:
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{system.api_port}",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    studies = make_studies(testdata, tmp_path / "sent", 5)
    for _uid, folder in studies:  # one after the other: received in this order
        send_dicom(system.port, dicom_files(folder))
    uids = [uid for uid, _ in studies]
    wait_for(lambda: _all_converted(api, uids), 120, "every study filed and converted", SLOW_POLL)
    # The converter writes each study's BIDS session after its conversion: the disk is
    # measured (and filled) once those files are there too.
    wait_for(lambda: len(_bids_sessions(system)) == len(uids), 60, "the BIDS sessions made")
    pinned = uids[1]
    assert api.post(f"/studies/{pinned}/pin").json()["pinned"] is True
    assert _storage(api)["next_eviction"]["study_count"] == 0  # plenty of space yet

    free = disk_usage(system.data_dir).free
    (system.data_dir / "ballast").write_bytes(b"\0" * (free - LOW + 8192))
    assert disk_usage(system.data_dir).free < LOW

    dry_run = _storage(api)["next_eviction"]
    planned = [s["study_uid"] for s in dry_run["studies"]]
    unpinned = [uid for uid in uids if uid != pinned]
    assert 2 <= len(planned) < len(unpinned) and planned == unpinned[: len(planned)], "oldest"
    assert {s["reason"] for s in dry_run["studies"]} == {"space"}
    folders = {
        uid: system.data_dir / "archive" / api.get(f"/studies/{uid}").json()["folder"]
        for uid in uids
    }
    assert all((folders[uid] / "nifti").is_dir() for uid in uids)

    system.start("retention")  # a second retention process: it evicts at its start
    # A study leaves the listings as it is marked for eviction, before its folder goes.
    wait_for(
        lambda: (
            _listed(api) == set(uids) - set(planned)
            and not any(folders[uid].exists() for uid in planned)
        ),
        60,
        "the planned evictions",
    )

    for uid in planned:
        assert api.get(f"/studies/{uid}").status_code == 404
        assert not folders[uid].exists(), "its instances and nifti/ are gone"
    for uid in set(uids) - set(planned):
        assert len(list(folders[uid].rglob("*.dcm"))) == 4
    assert disk_usage(system.data_dir).free >= TARGET
    assert _storage(api)["next_eviction"]["study_count"] == 0
    wait_for(lambda: _announced(tmp_path / "catalog.sqlite") == planned, 30, "study.evicted")
    assert system.log().count("evicted study") == len(planned)


def _storage(api: httpx.Client) -> dict[str, Any]:
    answer = api.get("/storage")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _bids_sessions(system: Dcmdb) -> set[str]:
    """The BIDS sessions the converter said it made."""
    return set(re.findall(r"BIDS \S+ (sub-\S+ ses-\S+): \d+ file", system.log()))


def _listed(api: httpx.Client) -> set[str]:
    return {s["study_uid"] for s in api.get("/studies").json()["items"]}


def _all_converted(api: httpx.Client, uids: list[str]) -> bool:
    try:
        items = api.get("/studies").json()["items"]
    except (httpx.HTTPError, KeyError):
        return False
    return {s["study_uid"] for s in items} == set(uids) and all(
        s["conversion"]["pending"] == 0 and s["instance_count"] == 4 for s in items
    )


def _announced(catalog: Path) -> list[str]:
    """The studies the audit table says were evicted and announced, in order."""
    with sqlite3.connect(catalog) as connection:
        rows = connection.execute(
            "SELECT study_instance_uid FROM evictions "
            "WHERE evicted_at IS NOT NULL AND announced ORDER BY id"
        ).fetchall()
    return [uid for (uid,) in rows]

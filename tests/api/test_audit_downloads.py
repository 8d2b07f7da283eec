"""Bytes sent, as a real server sends them: ``dcmdb api`` in a process of its own, a NIfTI
volume of 256 MB, downloaded whole and cut off by its client; and a shutdown that writes
what the trail still held."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.arrivals import Sorter
from tests.audit_server import Server, answered, api_server
from tests.audit_site import ADMIN, READ, READER, patient_study, stored
from tests.filed_studies import Archive
from tests.support import wait_for

pytestmark = pytest.mark.integration

VOLUME = 256 << 20  # far beyond what the sockets between server and client buffer
CUT_AFTER = 1 << 20


@pytest.fixture
def archive(sorter: Sorter, testdata: Path, catalog_url: str) -> Archive:
    return Archive(sorter, testdata, catalog_url)


@pytest.fixture
def server(archive: Archive) -> Iterator[Server]:
    with api_server(archive) as running:
        yield running


def _large_volume(archive: Archive) -> tuple[str, str]:
    """A study whose series' NIfTI is VOLUME bytes (sparse: no disk is spent on it)."""
    study, series = patient_study(archive)
    volume = next((archive.folder(study) / "nifti").glob("*.nii.gz"))
    os.truncate(volume, VOLUME)
    return study, series


def _nifti_records(server: Server, count: int) -> list[dict[str, Any]]:
    """The series.nifti records, oldest first, once `count` are there: a cut answer is
    recorded when the server notices the cut."""
    found: list[dict[str, Any]] = []

    def recorded() -> bool:
        answer = answered(server, "/audit?action=series.nifti", ADMIN)
        found[:] = reversed(answer.json()["items"])
        return len(found) == count

    wait_for(recorded, 30, f"{count} NIfTI download(s) in the audit trail")
    return found


def test_a_whole_download_and_a_cut_one_record_the_bytes_sent(
    server: Server, archive: Archive
) -> None:
    study, series = _large_volume(archive)
    url = f"{server.url}/series/{series}/nifti"
    with httpx.stream("GET", url, headers=READ, timeout=60) as whole:
        assert whole.status_code == 200
        received_whole = sum(len(chunk) for chunk in whole.iter_bytes())
    assert received_whole == VOLUME

    received_cut = 0
    with httpx.stream("GET", url, headers=READ, timeout=60) as cut:
        for chunk in cut.iter_bytes():
            received_cut += len(chunk)
            if received_cut >= CUT_AFTER:
                break  # the client goes away, the connection closes

    whole_record, cut_record = _nifti_records(server, 2)
    assert whole_record["bytes_sent"] == VOLUME
    assert received_cut <= cut_record["bytes_sent"] < VOLUME // 2, cut_record
    for record in (whole_record, cut_record):
        assert record["status"] == 200
        assert (record["key_name"], record["study_uid"], record["series_uid"]) == (
            READER,
            study,
            series,
        )
        assert record["client"] == "127.0.0.1"


def test_a_shutdown_writes_what_the_trail_held(server: Server, archive: Archive) -> None:
    study, _ = patient_study(archive)
    for _ in range(20):
        assert answered(server, f"/studies/{study}", READ).status_code == 200
    server.dcmdb.stop()  # SIGTERM at once: the latest records are still held
    rows = stored(archive.sessions)
    assert [row.action for row in rows] == ["study.read"] * 20
    assert {(row.key_name, row.study_uid, row.client) for row in rows} == {
        (READER, study, "127.0.0.1")
    }

"""The fault run in CI: 2,000 instances through ``dcmdb up`` while its parts are killed,
RabbitMQ restarted and the data disk filled; nothing acknowledged may be lost or
duplicated. ``scripts/soak`` runs the same for longer."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.fault_run import Pipeline, generate, run
from tests.system import Dcmdb

# It restarts RabbitMQ: scripts/test runs it alone, after the parallel round.
pytestmark = [pytest.mark.e2e, pytest.mark.restarts_broker]


@pytest.fixture
def data_disk(tmp_path: Path) -> Iterator[Path]:
    """The data folder on a file system of its own (256 MiB), so that it can be filled."""
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(data)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"cannot mount a tmpfs: {mounted.stderr}"
    yield data
    subprocess.run(["umount", "-l", str(data)], check=False)


def test_nothing_acknowledged_is_lost_or_duplicated(
    data_disk: Path, tmp_path: Path, broker_url: str
) -> None:
    workload = generate(tmp_path / "workload", studies=10, series_per_study=4, slices=50)
    dcmdb = Dcmdb(
        data_disk,
        broker_url,
        f"sqlite:///{tmp_path / 'catalog.sqlite'}",  # off the disk that fills up
        extra_env={
            "DCMDB_STABLE_AGE": "2",
            "DCMDB_SWEEP_INTERVAL": "2",
            "DCMDB_MIN_FREE": "1MB",
            "DCMDB_LOG_LEVEL": "WARNING",
        },
    )
    up = dcmdb.start("up")
    pipeline = Pipeline(dcmdb, up)
    try:
        dcmdb.wait_until_listening(60)
        report = run(pipeline, workload)
    finally:
        pipeline.close()
        dcmdb.stop()
    print("\n".join(report.lines()))
    assert report.sent == 2000
    assert report.acknowledged == report.sent  # the sender kept at it until all were
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.stored == report.filed == report.sent
    assert report.converted == report.series
    assert report.dead_lettered == 0
    assert all(fault.recovered_after is not None for fault in report.faults), report.lines()

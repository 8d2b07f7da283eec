"""The fault run in CI: 2,000 instances through ``dcmdb up`` while its parts are killed,
RabbitMQ restarted and the data disk filled; nothing acknowledged may be lost or
duplicated. ``scripts/soak`` runs the same for longer. And 1,000 instances through
``dcmdb up`` on a three-node RabbitMQ cluster, the node it is on killed twice over."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker_cluster import Cluster
from tests.conftest import OWN_RABBITMQ
from tests.reliability.fault_run import (
    CLUSTER_SCHEDULE,
    Pipeline,
    Report,
    Schedule,
    Workload,
    generate,
    run,
)
from tests.system import Dcmdb

# They restart RabbitMQ or kill its nodes: RabbitMQ nodes of their own, not the machine's.
pytestmark = [pytest.mark.e2e, pytest.mark.shared_setup(shared_by=OWN_RABBITMQ)]


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


QUICK = {
    "DCMDB_STABLE_AGE": "2",
    "DCMDB_SWEEP_INTERVAL": "2",
    "DCMDB_MIN_FREE": "1MB",
    "DCMDB_LOG_LEVEL": "WARNING",
}


# Long by design (a cluster started, a workload sent through faults): more than the suite's
# 300 s per test on a slow machine.
@pytest.mark.timeout(900)
def test_nothing_acknowledged_is_lost_or_duplicated(
    data_disk: Path, tmp_path: Path, rabbitmq_node: Cluster, own_broker_url: str
) -> None:
    workload = generate(tmp_path / "workload", studies=10, series_per_study=4, slices=50)
    catalog = f"sqlite:///{tmp_path / 'catalog.sqlite'}"  # off the disk that fills up
    dcmdb = Dcmdb(data_disk, own_broker_url, catalog, extra_env=QUICK)
    report = fault_run(dcmdb, workload, rabbitmq_node)
    assert report.sent == 2000
    assert_whole(report)


@pytest.mark.timeout(900)
def test_nothing_acknowledged_is_lost_or_duplicated_when_broker_nodes_die(
    tmp_path: Path, rabbitmq_cluster: Cluster, cluster_urls: str
) -> None:
    workload = generate(tmp_path / "workload", studies=10, series_per_study=4, slices=25)
    dcmdb = Dcmdb(
        tmp_path / "data", cluster_urls, f"sqlite:///{tmp_path / 'catalog.sqlite'}", extra_env=QUICK
    )
    report = fault_run(dcmdb, workload, rabbitmq_cluster, CLUSTER_SCHEDULE)
    assert report.sent == 1000
    assert_whole(report)
    node_faults = [f for f in report.faults if f.name.startswith("broker node")]
    assert len(node_faults) == 2
    assert node_faults[0].name != node_faults[1].name  # the second struck the node it moved to
    assert all(f.publishing_after is not None for f in node_faults), report.lines()


def fault_run(
    dcmdb: Dcmdb,
    workload: Workload,
    cluster: Cluster | None = None,
    schedule: Schedule | None = None,
) -> Report:
    """``dcmdb up`` through the fault run; its report, printed."""
    pipeline = Pipeline(dcmdb, dcmdb.start("up"), cluster)
    try:
        dcmdb.wait_until_listening(60)
        report = run(pipeline, workload, schedule=schedule)
    finally:
        pipeline.close()
        dcmdb.stop()
    print("\n".join(report.lines()))
    return report


def assert_whole(report: Report) -> None:
    assert report.acknowledged == report.sent  # the sender kept at it until all were
    assert report.lost == 0
    assert report.duplicated == 0
    assert report.stored == report.filed == report.sent
    assert report.converted == report.series
    assert report.dead_lettered == 0
    assert all(fault.recovered_after is not None for fault in report.faults), report.lines()

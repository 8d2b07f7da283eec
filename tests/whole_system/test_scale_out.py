"""Scaling out: two receivers, two sorters and two converters, started one by one as on
several machines, share one RabbitMQ virtual host, one PostgreSQL catalog and one data
directory. Every instance is filed once and every generation of a series converted once."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pydicom
import pytest

from shared.bids.dataset import BIDS_FOLDER
from shared.broker import dead_letter_counts, declare_topology
from shared.messages import SeriesCompleted, Topology
from tests.support import SLOW_POLL, free_port, wait_for
from tests.system import Dcmdb, catalog, dicom_files, send_dicom, settled

pytestmark = pytest.mark.e2e

TOPOLOGY = Topology()  # the default installation's

RECEIVERS = {"receiver-a": "incoming-a", "receiver-b": "incoming-b"}  # name: incoming folder
SORTERS = ("sorter-1", "sorter-2")
CONVERTERS = ("converter-1", "converter-2")
OBSERVER = "test.observer"
OUTCOMES = ("series.converted", "series.skipped", "series.failed")
CONVERSION_LINE = re.compile(r"series (\S+) generation (\d+): (converted|skipped|failed)")


@pytest.fixture
def cluster(tmp_path: Path, broker_url: str, postgres_url: str) -> Iterator[Dcmdb]:
    dcmdb = Dcmdb(
        tmp_path / "data",
        broker_url,
        postgres_url,
        # No side HTTP port: two services of a kind on one host would want the same one.
        extra_env={"DCMDB_STABLE_AGE": "3", "DCMDB_METRICS_PORT": "0"},
    )
    asyncio.run(observe(broker_url))
    yield dcmdb
    dcmdb.stop()


async def observe(url: str) -> None:
    """A queue of the test's own that keeps a copy of every completion and outcome."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, TOPOLOGY)
        queue = await channel.declare_queue(OBSERVER, durable=True)
        for key in (SeriesCompleted.routing_key, *OUTCOMES):
            await queue.bind(TOPOLOGY.events_exchange, routing_key=key)


async def observed(url: str) -> list[tuple[str, SeriesCompleted | dict[str, object]]]:
    connection = await aio_pika.connect(url)
    events: list[tuple[str, SeriesCompleted | dict[str, object]]] = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(OBSERVER)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            key = str(message.routing_key)
            if key == SeriesCompleted.routing_key:
                events.append((key, SeriesCompleted.model_validate_json(message.body)))
            else:
                events.append((key, dict(json.loads(message.body))))
    return events


async def waiting_and_dead(url: str) -> tuple[int, dict[str, int]]:
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        waiting = 0
        for name in ("dcmdb.sorter", "dcmdb.converter"):
            queue = await channel.declare_queue(name, passive=True)
            waiting += queue.declaration_result.message_count or 0
        return waiting, await dead_letter_counts(connection, TOPOLOGY)


def split_by_folder(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """Alternate source folders between the two receivers; a folder that holds the same
    SOP instances as another (the d2n_mr_4slice encodings) may go to either."""
    folders = sorted({path.parent for path in files})
    first = {folder for index, folder in enumerate(folders) if index % 2 == 0}
    return [p for p in files if p.parent in first], [p for p in files if p.parent not in first]


def test_two_sorters_and_two_converters_file_and_convert_each_instance_once(
    cluster: Dcmdb, testdata: Path, broker_url: str
) -> None:
    ports = {}
    for name, folder in RECEIVERS.items():
        ports[name] = free_port()
        cluster.start(
            "receiver",
            name=name,
            env={"DCMDB_DICOM_PORT": str(ports[name]), "DCMDB_INCOMING_FOLDER": folder},
        )
    for name in SORTERS:
        # DEBUG: the sorter says which instances it filed.
        cluster.start("sorter", name=name, env={"DCMDB_LOG_LEVEL": "DEBUG"})
    for name in CONVERTERS:
        cluster.start("converter", name=name, env={"DCMDB_WORKERS": "1"})
    for name in RECEIVERS:
        wait_for(lambda n=name: "listening" in cluster.log(n), 60, f"{name} to listen")

    files = dicom_files(testdata)
    sop_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert 200 <= len(sop_uids) < len(files)  # a few hundred, and re-sends among them
    senders = [
        threading.Thread(target=send_dicom, args=(port, part))
        for port, part in zip(ports.values(), split_by_folder(files), strict=True)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    wait_for(
        lambda: settled(cluster.database_url, sop_uids), 600, "everything converted", SLOW_POLL
    )
    cluster.stop()  # each service finishes what it holds: anything repeated shows now

    series, instances = catalog(cluster.database_url)
    # Filed once: one row per SOP instance, one file per row, nothing left behind.
    assert sorted(i.sop_instance_uid for i in instances) == sorted(sop_uids)
    archive = cluster.data_dir / "archive"
    dicom_on_disk = sorted(
        str(p.relative_to(archive))
        for p in archive.rglob("*")
        if p.is_file()
        and p.parent.name != "nifti"
        and p.relative_to(archive).parts[1] != BIDS_FOLDER
    )
    assert dicom_on_disk == sorted(i.path for i in instances)
    for folder in RECEIVERS.values():
        assert not list((cluster.data_dir / folder).glob("*.dcm")), folder
    assert sum(s.instance_count for s in series) == len(sop_uids)

    # Converted once: one completion and at most one outcome per generation, one for the
    # newest; the outputs on disk are exactly those the catalog lists.
    events = asyncio.run(observed(broker_url))
    completions = Counter(
        (e.series_instance_uid, e.generation) for k, e in events if isinstance(e, SeriesCompleted)
    )
    outcomes = Counter(
        (str(e["series_instance_uid"]), int(str(e["generation"])))
        for k, e in events
        if isinstance(e, dict)
    )
    assert [key for key, n in completions.items() if n > 1] == [], "completed more than once"
    assert [key for key, n in outcomes.items() if n > 1] == [], "converted more than once"
    for s in series:
        assert completions[(s.series_instance_uid, s.generation)] == 1, s.folder
        assert outcomes[(s.series_instance_uid, s.generation)] == 1, s.folder
    conversions = {
        name: Counter(
            (uid, int(generation))
            for uid, generation, _ in CONVERSION_LINE.findall(cluster.log(name))
        )
        for name in CONVERTERS
    }
    together = sum(conversions.values(), Counter())
    assert [key for key, n in together.items() if n > 1] == [], "one series converted twice"
    assert set(together) >= {(s.series_instance_uid, s.generation) for s in series}
    outputs_on_disk = sorted(
        str(p.relative_to(archive)) for p in archive.glob("*/*/nifti/*") if p.is_file()
    )
    listed = sorted(path for s in series for o in s.outputs for path in o.paths)
    assert outputs_on_disk == listed, "stray or missing NIfTI files"
    assert {s.conversion for s in series} >= {"converted", "skipped"}

    # Each of the two did part of the work, and nothing was dead-lettered or left waiting.
    for name in CONVERTERS:
        assert conversions[name], f"{name} converted nothing"
    for name in SORTERS:
        assert "filed instance" in cluster.log(name), f"{name} filed nothing"
    for name in RECEIVERS:
        assert re.search(r"association from \S+ at \S+ released: [1-9]", cluster.log(name)), name
    waiting, dead = asyncio.run(waiting_and_dead(broker_url))
    assert waiting == 0
    assert dead == {
        "dcmdb.sorter.dead": 0,
        "dcmdb.converter.dead": 0,
        "dcmdb.notifier.dead": 0,
        "dcmdb.bids.dead": 0,
    }
    for name in (*RECEIVERS, *SORTERS, *CONVERTERS):
        assert "Traceback" not in cluster.log(name), name

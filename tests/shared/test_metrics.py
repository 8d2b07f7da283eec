"""Metrics after an end-to-end run: every counter says what was sent, and the dashboard
asks only for metrics the services export.

One ``dcmdb up`` gets a series from storescu, a data set that does not parse, an
association from a stranger, a message that cannot be decoded (a dead letter) and a
retrieval from a PACS that is down; then each
service's /metrics is scraped and compared with what was done.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import aio_pika
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info

from shared.catalog.states import JobState
from shared.messages import SORTER_QUEUE, InstanceReceived, Topology
from shared.settings import METRICS_PORTS
from tests.conftest import REPO
from tests.support import free_port, wait_for
from tests.system import Dcmdb, dicom_files, echo, send_dicom, send_raw

pytestmark = pytest.mark.e2e

SERIES = "ge_fmri_epi_4d"
SERVICES = ("receiver", "sorter", "converter", "retriever", "retention", "notifier", "api")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def system(tmp_path: Path, broker_url: str) -> Iterator[Dcmdb]:
    dcmdb = Dcmdb(
        tmp_path / "data",
        broker_url,
        f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        extra_env={
            "DCMDB_STABLE_AGE": "2",
            "DCMDB_PACS": f"DOWN@127.0.0.1:{free_port()}",  # nothing listens there
            "DCMDB_PACS_ATTEMPTS": "1",
            "DCMDB_NIGHTLY_RETRIEVE": "",
            "DCMDB_POLL_INTERVAL": "0.5",
            "DCMDB_ALLOWED_CALLING_AES": "ECHOSCU,SCANNER1,RAWSCU",
        },
    )
    dcmdb.start("up")
    try:
        dcmdb.wait_until_listening()  # one C-ECHO association
        for service in SERVICES:  # the broker's topology is declared, the API answers
            wait_for(
                lambda service=service: status(dcmdb.side_url(service, "/readyz")) == 200,
                120,
                f"{service} to be ready",
            )
        yield dcmdb
    finally:
        dcmdb.stop()


def scrape(system: Dcmdb, service: str) -> Samples:
    with urllib.request.urlopen(system.side_url(service, "/metrics"), timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), -1.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # not listening yet


async def publish_undecodable(broker_url: str) -> None:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(Topology().events_exchange)
        message = aio_pika.Message(b"{not an event", content_type="application/json")
        await exchange.publish(message, routing_key=InstanceReceived.routing_key)


def post_retrieval(system: Dcmdb) -> None:
    request = urllib.request.Request(
        system.side_url("api", "/retrievals"),
        data=json.dumps({"study_date": "yesterday"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202


def stored_sizes(system: Dcmdb) -> list[int]:
    with sqlite3.connect(system.database_url.removeprefix("sqlite:///")) as catalog:
        return [size for (size,) in catalog.execute("SELECT size FROM instances")]


def test_each_service_counts_what_was_sent(system: Dcmdb, testdata: Path, tmp_path: Path) -> None:
    files = dicom_files(testdata / SERIES)
    syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for f in files}  # fmt: skip
    assert len(syntaxes) == 1, "one storescu association"
    send_dicom(system.port, files, calling_ae="SCANNER1")
    assert send_raw(system.port, garbage_from(files[0], tmp_path)) == 0xC210  # quarantined
    assert not echo(system.port, calling_ae="STRANGER")  # rejected
    asyncio.run(publish_undecodable(system.broker_url))
    post_retrieval(system)

    def settled() -> bool:
        return (
            total(scrape(system, "converter"), "dcmdb_conversions_total") == 1
            and value(scrape(system, "retriever"), "dcmdb_retrieval_jobs", state="failed") == 1
            and value(
                scrape(system, "sorter"), "dcmdb_dead_letter_messages", queue="dcmdb.sorter.dead"
            ) == 1
            and value(
                scrape(system, "receiver"),
                "dcmdb_events_published_total",
                event="association.closed",
            ) == 3
        )  # fmt: skip

    wait_for(settled, 180, "the series converted, the job failed, the dead letter counted")
    samples = {service: scrape(system, service) for service in SERVICES}
    sent = len(files)

    receiver = samples["receiver"]
    assert value(receiver, "dcmdb_receiver_instances_total", calling_ae="SCANNER1") == sent
    assert value(receiver, "dcmdb_receiver_bytes_total", calling_ae="SCANNER1") == sum(
        stored_sizes(system)
    )
    assert total(receiver, "dcmdb_receiver_instances_total") == sent
    assert value(
        receiver, "dcmdb_receiver_instances_refused_total", calling_ae="RAWSCU",
        reason="cannot_parse",
    ) == 1  # fmt: skip
    assert value(receiver, "dcmdb_receiver_store_seconds_count") == sent + 1
    # The C-ECHO that found the receiver listening, storescu's, and the one of the bad data set.
    assert value(receiver, "dcmdb_receiver_associations_total", outcome="released") == 3
    assert value(receiver, "dcmdb_receiver_associations_total", outcome="aborted") == 0
    assert value(receiver, "dcmdb_receiver_associations_total", outcome="rejected") == 1
    assert value(receiver, "dcmdb_receiver_associations_open") == 0
    assert value(receiver, "dcmdb_events_published_total", event="instance.received") == sent
    assert total(receiver, "dcmdb_events_publish_failures_total") == 0
    assert value(receiver, "dcmdb_receiver_events_waiting") == 0
    disk = shutil.disk_usage(system.data_dir)
    assert value(receiver, "dcmdb_disk_size_bytes", directory="data") == disk.total
    free = value(receiver, "dcmdb_disk_free_bytes", directory="archive")
    assert abs(free - disk.free) < 0.05 * disk.total

    sorter = samples["sorter"]
    assert value(sorter, "dcmdb_sorter_instances_total", outcome="filed") == sent
    assert value(sorter, "dcmdb_sorter_instances_total", outcome="quarantined") == 0
    assert value(sorter, "dcmdb_sorter_batch_seconds_count") >= 1
    assert value(sorter, "dcmdb_events_published_total", event="instance.filed") == sent
    assert value(sorter, "dcmdb_series_completed_total", reason="stable") == 1
    assert value(sorter, "dcmdb_events_published_total", event="series.completed") == 1
    topology = Topology()  # the default installation's
    assert value(sorter, "dcmdb_queue_messages", queue=topology.queue_name(SORTER_QUEUE)) == 0
    dead = topology.dead_letter_name(SORTER_QUEUE)
    assert value(sorter, "dcmdb_dead_letter_messages", queue=dead) == 1

    converter = samples["converter"]
    assert total(converter, "dcmdb_conversions_total", outcome="converted") == 1
    assert value(converter, "dcmdb_conversion_seconds_count", outcome="converted") == 1
    assert value(converter, "dcmdb_events_published_total", event="series.converted") == 1

    retention = samples["retention"]  # retention is off here: nothing evicted, the disk seen
    assert total(retention, "dcmdb_evictions_total") == 0
    free = value(retention, "dcmdb_disk_free_bytes", directory="archive")
    assert abs(free - disk.free) < 0.05 * disk.total

    retriever = samples["retriever"]
    jobs = {
        state: value(retriever, "dcmdb_retrieval_jobs", state=state) for state in tuple(JobState)
    }
    assert jobs == {**dict.fromkeys(tuple(JobState), 0), "failed": 1}

    notifier = samples["notifier"]  # no webhook registered: nothing to deliver
    assert value(notifier, "dcmdb_webhook_deliveries_pending") == 0
    assert total(notifier, "dcmdb_webhook_attempts_total") == 0
    assert value(
        notifier, "dcmdb_webhook_attempts_total", event="study.ready", state="delivered"
    ) == 0  # fmt: skip

    assert value(
        samples["api"], "dcmdb_api_requests_total", method="POST", route="/retrievals",
        status="202",
    ) == 1  # fmt: skip

    for service in METRICS_PORTS.keys() & set(SERVICES):
        assert status(system.side_url(service, "/healthz")) == 200, service
        assert status(system.side_url(service, "/readyz")) == 200, service

    exported = {name for found in samples.values() for name, _labels in found}
    assert dashboard_metrics() <= exported, "the dashboard asks for metrics nobody exports"


def garbage_from(source: Path, folder: Path) -> Path:
    """A Part 10 file with ``source``'s file meta information and a data set that is none."""
    buffer = BytesIO()
    write_file_meta_info(buffer, read_file_meta_info(source))
    path = folder / "garbage.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + b"not a data set\n" * 8)
    return path


def dashboard_metrics() -> set[str]:
    """The dcmdb_ metric names the Grafana dashboard's queries read."""
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/dcmdb.json").read_text())
    names = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\bdcmdb_[a-z0-9_]+", target["expr"])
    }
    assert len(names) > 15, names
    return names

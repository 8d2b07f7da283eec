"""``dcmdb notifier`` as a process, with the real RabbitMQ and catalog: the converter's
outcomes published on the bus become deliveries to a lab's receiver that is down at first,
each once, in order per study; a finished retrieval job is told too."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest
from sqlalchemy import select

from services.notifier.catalog import Catalog
from shared import webhooks
from shared.broker import Publisher, connect, dead_letter_counts
from shared.catalog.states import ConversionState, DeliveryState, StudyRetrievalState, WebhookEvent
from shared.catalog.webhooks import Webhook, WebhookDelivery
from shared.messages import NOTIFIER_QUEUE, Event, Topology
from tests.notifier.peers import WebhookReceiver
from tests.notifier.rows import PATIENT_ID, PATIENT_NAME, concluded, file_study, finished_job
from tests.support import wait_for
from tests.system import Dcmdb

pytestmark = pytest.mark.integration

LAB = "SMITH_JOHN"
TOPOLOGY = Topology()


@pytest.fixture
def notifier(tmp_path: Path, broker_url: str, catalog_url: str) -> Iterator[Dcmdb]:
    system = Dcmdb(
        tmp_path / "data",
        broker_url,
        catalog_url,
        extra_env={
            "DCMDB_WEBHOOK_RETRY_MIN": "0.2",
            "DCMDB_WEBHOOK_RETRY_MAX": "1",
            "DCMDB_WEBHOOK_POLL_INTERVAL": "0.2",
            "DCMDB_WEBHOOK_RETRIEVAL_WAIT": "0",
            "DCMDB_WEBHOOK_LINK_BASE": "https://dcmdb.example.org",
        },
    )
    yield system
    system.stop()


async def publish(url: str, events: list[Event], garbage: bytes) -> None:
    connection = await connect(url, name="test")
    try:
        publisher = Publisher(connection, TOPOLOGY)
        await publisher.start()
        for event in events:
            await publisher.publish(event)
        channel = await connection.channel()
        exchange = await channel.get_exchange(TOPOLOGY.events_exchange)
        await exchange.publish(aio_pika.Message(garbage), routing_key="series.failed")
    finally:
        await connection.close()


def dead_letters(url: str) -> int:
    async def count() -> int:
        connection = await connect(url, name="test")
        try:
            return (await dead_letter_counts(connection, TOPOLOGY))[
                TOPOLOGY.dead_letter_name(NOTIFIER_QUEUE)
            ]
        finally:
            await connection.close()

    return asyncio.run(count())


def deliveries(catalog: Catalog) -> list[WebhookDelivery]:
    with catalog.reader() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_outcomes_on_the_bus_reach_a_receiver_that_was_down_once_each_in_order(
    notifier: Dcmdb, broker_url: str, catalog_url: str
) -> None:
    catalog = Catalog.open(catalog_url)
    receiver = WebhookReceiver()
    try:
        with catalog.writer.begin() as session:
            hook: Webhook = webhooks.register(
                session, lab=LAB, url=receiver.url, events=list(WebhookEvent),
                include_patient=False, created_by="test",
            )  # fmt: skip
        ready, failing = file_study(catalog.writer, LAB), file_study(catalog.writer, LAB)
        events: list[Event] = [
            concluded(catalog.writer, ready, ready.series[0], ConversionState.CONVERTED),
            concluded(catalog.writer, failing, failing.series[0], ConversionState.FAILED),
            concluded(catalog.writer, ready, ready.series[1], ConversionState.SKIPPED),
            concluded(catalog.writer, failing, failing.series[1], ConversionState.FAILED),
        ]
        events.append(events[2])  # the broker may deliver one twice; so may a publisher
        notifier.start("notifier", name="notifier")
        asyncio.run(publish(broker_url, events, garbage=b'{"outcome": "failed", "study'))
        job_id = finished_job(catalog.writer, {ready.uid: StudyRetrievalState.COMPLETED})

        def waiting() -> bool:
            found = deliveries(catalog)
            return len(found) == 4 and max(d.attempts for d in found) >= 2

        wait_for(waiting, 60, "four deliveries tried while the receiver is down", 0.5)
        receiver.start()
        wait_for(
            lambda: all(d.state == DeliveryState.DELIVERED for d in deliveries(catalog)),
            60,
            "every delivery delivered",
            0.5,
        )
        assert dead_letters(broker_url) == 1, "the undecodable message is dead-lettered"
    finally:
        receiver.stop()
        catalog.dispose()
    delivered = receiver.delivered()
    assert len(delivered) == len(receiver.requests) == 4, "each delivered once"
    told = [(r.json["event"], r.json.get("study", {}).get("study_uid")) for r in delivered]
    of_failing = [
        r.json["series"]["series_uid"] for r in delivered if r.json["event"] == "series.failed"
    ]
    assert of_failing == list(failing.series), "in order per study"
    assert sorted(told, key=str) == sorted(
        [
            ("study.ready", ready.uid),
            ("series.failed", failing.uid),
            ("series.failed", failing.uid),
            ("retrieval.finished", None),
        ],
        key=str,
    )
    [retrieval] = [r.json for r in delivered if r.json["event"] == "retrieval.finished"]
    assert retrieval["retrieval"]["link"] == f"https://dcmdb.example.org/retrievals/{job_id}"
    for request in delivered:
        assert webhooks.verify(hook.secret, request.body, request.headers["X-Dcmdb-Signature"])
        assert PATIENT_ID.encode() not in request.body
        assert b"Lovelace" not in request.body
    [process] = notifier.processes
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    log = notifier.log("notifier")
    assert "notifier stopped" in log and "Traceback" not in log
    assert PATIENT_ID not in log and PATIENT_NAME.split("^")[0] not in log

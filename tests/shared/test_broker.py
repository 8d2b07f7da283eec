"""Tests for shared.broker against a real RabbitMQ (a fresh virtual host per test).

Each test runs its own event loop with ``asyncio.run``; consumers run as tasks,
on a connection of their own, cancelled at the end. Waiting is always polling
with a deadline.

Queue depths come from passive declares, which count *ready* messages only: a
message a consumer holds unacknowledged is not counted. So each consumer test
ends by closing the consumer's connection (which returns whatever it had not
acked to its queue) and checking the depths again: only then does "the sorter
queue is empty" mean "the message was acked". (``rabbitmqctl list_queues
messages`` would count unacked ones too, but for quorum queues it lags by
seconds.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

import shared.broker
from shared.broker import (
    Publisher,
    connect,
    consume,
    consume_batches,
    dead_letter_counts,
    declare_topology,
)
from shared.errors import PermanentError, TransientError
from shared.messages import (
    SORTER_QUEUE,
    AssociationClosed,
    InstanceReceived,
    Topology,
)
from tests.conftest import JsonLog
from tests.support import eventually, free_port, refused_port

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOPOLOGY = Topology()  # the default installation's
EVENTS_EXCHANGE = TOPOLOGY.events_exchange
DEAD_LETTER_EXCHANGE = TOPOLOGY.dead_letter_exchange
SORTER = TOPOLOGY.queue_name(SORTER_QUEUE)
SORTER_DEAD = TOPOLOGY.dead_letter_name(SORTER_QUEUE)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run a test's coroutine in a fresh loop; a hang fails the test instead of stalling."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def received(n: int = 0, **changes: Any) -> InstanceReceived:
    fields: dict[str, Any] = {
        "sop_instance_uid": f"1.2.826.0.1.3680043.8.498.{n}",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.100",
        "series_instance_uid": "1.2.826.0.1.3680043.8.498.101",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "incoming_path": f"incoming/{n}.dcm",
        "size": 1000 + n,
        "received_at": dt.datetime.now(dt.UTC),
        "calling_ae": "PACS01",
        "peer_host": "10.0.0.7",
        "association_id": "assoc-1",
    }
    fields.update(changes)
    return InstanceReceived(**fields)


def vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl without blocking the loop (consumers keep running meanwhile)."""
    tool = shutil.which("rabbitmqctl")
    assert tool is not None, "rabbitmqctl is not installed"
    process = await asyncio.create_subprocess_exec(
        tool, "-q", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def list_queues(url: str) -> dict[str, dict[str, Any]]:
    """name -> {name, type, durable, arguments}, as the broker reports them."""
    out = await rabbitmqctl(
        "list_queues",
        "-p",
        vhost_of(url),
        "--formatter",
        "json",
        "name",
        "type",
        "durable",
        "arguments",
    )
    return {row["name"]: row for row in json.loads(out)}


def arguments(row: dict[str, Any]) -> dict[str, Any]:
    """A queue's arguments from ``list_queues`` JSON: [[name, type, value], ...]."""
    return {name: value for name, _, value in row["arguments"]}


async def depths(connection: AbstractRobustConnection, names: Iterable[str]) -> dict[str, int]:
    return {name: await ready_count(connection, name) for name in names}


async def settled(
    connection: AbstractRobustConnection,
    expected: dict[str, int],
    *,
    hold: float = 0.0,
    timeout: float = 15,
) -> None:
    """Wait until the queues hold ``expected`` ready messages, then for ``hold`` seconds
    check that they keep holding exactly that (nothing comes back)."""
    deadline = time.monotonic() + timeout
    while (counts := await depths(connection, expected)) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"queues hold {counts}, expected {expected}")
        await asyncio.sleep(0.05)
    until = time.monotonic() + hold
    while time.monotonic() < until:
        await asyncio.sleep(0.05)
        counts = await depths(connection, expected)
        assert counts == expected, f"queues changed to {counts}, expected {expected}"


FINAL_HOLD = 0.3  # after the consumer's connection closed: time for a return to show


async def ready_count(connection: AbstractRobustConnection, name: str) -> int:
    """Ready messages in a queue, by passive declare (fails if the queue does not exist)."""
    channel = await connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0
    finally:
        await channel.close()


async def get_all(connection: AbstractRobustConnection, name: str) -> list[Any]:
    """Take every ready message out of a queue (auto-acked)."""
    channel = await connection.channel()
    queue = await channel.get_queue(name, ensure=False)
    messages = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        messages.append(message)
    await channel.close()
    return messages


@contextlib.asynccontextmanager
async def running(
    url: str, consumer: Callable[[AbstractRobustConnection], Coroutine[Any, Any, None]]
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``consumer(connection)`` on a connection of its own for the block's duration.

    On leaving, the consumer is cancelled and its connection closed, so that any
    message it had not acked goes back to its queue. A consumer that died on its
    own (it should run until cancelled) fails the test.
    """
    connection = await connect(url, name="test-consumer")
    task = asyncio.create_task(consumer(connection))
    try:
        yield task
        if task.done():
            task.result()  # re-raises what killed it
            pytest.fail("the consumer returned on its own")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await connection.close()


@contextlib.asynccontextmanager
async def broker(url: str) -> AsyncIterator[tuple[AbstractRobustConnection, Publisher]]:
    connection = await connect(url, name="test")
    try:
        publisher = Publisher(connection, TOPOLOGY)
        await publisher.start()
        yield connection, publisher
    finally:
        await connection.close()


async def publish_raw(connection: AbstractRobustConnection, body: bytes, key: str) -> None:
    """What a buggy or foreign publisher might put on the bus."""
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(EVENTS_EXCHANGE)
    await exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=key
    )
    await channel.close()


# -- topology and publishing --------------------------------------------------------------


def test_topology_declares_durable_quorum_queues_with_dead_lettering(broker_url: str) -> None:
    async def scenario() -> None:
        async with broker(broker_url) as (connection, _):
            # declaring again (every service does at start) must agree with what exists
            await declare_topology(await connection.channel(), TOPOLOGY)
            assert await ready_count(connection, SORTER) == 0
            assert await ready_count(connection, SORTER_DEAD) == 0
            channel = await connection.channel()
            await channel.declare_exchange(EVENTS_EXCHANGE, passive=True)
            await channel.declare_exchange(DEAD_LETTER_EXCHANGE, passive=True)
            queues = await list_queues(broker_url)
            exchanges = await rabbitmqctl(
                "list_exchanges", "-p", vhost_of(broker_url), "name", "type", "durable"
            )

        sorter = queues[SORTER]
        assert sorter["type"] == "quorum"
        assert sorter["durable"] is True
        assert arguments(sorter) == {
            "x-queue-type": "quorum",
            "x-delivery-limit": SORTER_QUEUE.delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": SORTER,
        }
        dead = queues[SORTER_DEAD]
        assert arguments(dead) == {"x-queue-type": "quorum"}
        assert dead["type"] == "quorum"
        assert dead["durable"] is True
        rows = {tuple(line.split("\t")) for line in exchanges.splitlines()}
        assert (EVENTS_EXCHANGE, "topic", "true") in rows
        assert (DEAD_LETTER_EXCHANGE, "direct", "true") in rows

    run(scenario())


def test_published_event_reaches_the_sorter_queue_as_a_persistent_message(
    broker_url: str,
) -> None:
    event = received(1)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            messages = await get_all(connection, SORTER)
            assert await ready_count(connection, SORTER_DEAD) == 0

        assert len(messages) == 1
        message = messages[0]
        assert InstanceReceived.model_validate_json(message.body) == event
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT  # 2: survives a restart
        assert message.message_id == str(event.message_id)
        assert message.type == InstanceReceived.routing_key
        assert message.content_type == "application/json"
        assert message.exchange == EVENTS_EXCHANGE
        assert message.routing_key == InstanceReceived.routing_key
        assert not message.redelivered

    run(scenario())


def test_publish_returns_only_once_the_broker_holds_the_message(broker_url: str) -> None:
    """No polling here: the count must be right the moment each publish returns."""

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            for n in range(1, 11):
                await publisher.publish(received(n))
                assert await ready_count(connection, SORTER) == n
            await asyncio.gather(*(publisher.publish(received(n)) for n in range(11, 31)))
            assert await ready_count(connection, SORTER) == 30

    run(scenario())


def test_published_messages_survive_the_publishers_connection(broker_url: str) -> None:
    """A confirmed event is the broker's: closing the publisher right away loses nothing."""
    events = [received(n) for n in range(5)]

    async def scenario() -> None:
        async with broker(broker_url) as (_, publisher):
            for event in events:
                await publisher.publish(event)
        async with broker(broker_url) as (connection, _):
            bodies = [m.body for m in await get_all(connection, SORTER)]
        assert [InstanceReceived.model_validate_json(body) for body in bodies] == events

    run(scenario())


# -- consume: the ack policy --------------------------------------------------------------

SETTLED_OK = {SORTER: 0, SORTER_DEAD: 0}
ONE_DEAD = {SORTER: 0, SORTER_DEAD: 1}


def consumer_of(
    handler: Callable[[InstanceReceived], Awaitable[None]],
) -> Callable[[AbstractRobustConnection], Coroutine[Any, Any, None]]:
    return lambda connection: consume(connection, TOPOLOGY, SORTER_QUEUE, InstanceReceived, handler)


def batch_consumer_of(
    handler: Callable[[list[InstanceReceived]], Awaitable[None]], **options: Any
) -> Callable[[AbstractRobustConnection], Coroutine[Any, Any, None]]:
    return lambda connection: consume_batches(
        connection, TOPOLOGY, SORTER_QUEUE, InstanceReceived, handler, **options
    )


def with_other_queues_empty(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` for the queues named, zero for every other dead-letter queue."""
    return dict.fromkeys(TOPOLOGY.dead_letter_names, 0) | counts


async def dead_letter_counts_are(
    connection: AbstractRobustConnection, expected: dict[str, int]
) -> bool:
    return await dead_letter_counts(connection, TOPOLOGY) == with_other_queues_empty(expected)


def test_a_handled_event_is_acked(broker_url: str) -> None:
    event = received(1)
    handled: list[InstanceReceived] = []

    async def handler(e: InstanceReceived) -> None:
        handled.append(e)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            async with running(broker_url, consumer_of(handler)):
                await eventually(lambda: len(handled) == 1)
                await settled(connection, SETTLED_OK)
            # the consumer's connection is closed: an unacked message would be back
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)
            assert await dead_letter_counts(connection, TOPOLOGY) == with_other_queues_empty(
                {SORTER_DEAD: 0}
            )

    run(scenario())
    assert handled == [event]


def test_a_permanent_error_dead_letters_at_once(broker_url: str) -> None:
    event = received(1)
    calls: list[InstanceReceived] = []

    async def handler(e: InstanceReceived) -> None:
        calls.append(e)
        raise PermanentError("this instance cannot be filed")

    async def scenario() -> list[Any]:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            async with running(broker_url, consumer_of(handler)):
                await eventually(lambda: dead_letter_counts_are(connection, {SORTER_DEAD: 1}))
                await settled(connection, ONE_DEAD)
            await settled(connection, ONE_DEAD, hold=FINAL_HOLD)
            return await get_all(connection, SORTER_DEAD)

    dead = run(scenario())
    assert calls == [event]  # exactly once: no redelivery, no retry
    assert len(dead) == 1
    assert InstanceReceived.model_validate_json(dead[0].body) == event
    assert dead[0].message_id == str(event.message_id)
    assert dead[0].headers["x-first-death-reason"] == "rejected"
    assert dead[0].headers["x-first-death-queue"] == SORTER


def test_lines_logged_about_a_message_name_it_and_its_study(
    broker_url: str, json_log: JsonLog
) -> None:
    event = received(1)

    async def handler(e: InstanceReceived) -> None:
        await asyncio.to_thread(json_log.logger.info, "filing")
        raise PermanentError("this instance cannot be filed")

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            async with running(broker_url, consumer_of(handler)):
                await eventually(lambda: dead_letter_counts_are(connection, {SORTER_DEAD: 1}))

    run(scenario())
    lines = {line["message"].split(" ")[0]: line for line in json_log.lines()}
    for line in lines["filing"], lines["dead-lettering"]:
        assert line["message_id"] == str(event.message_id), line
        assert line["study_uid"] == event.study_instance_uid, line


def test_an_event_that_always_fails_ends_dead_lettered_after_the_delivery_limit(
    broker_url: str,
) -> None:
    event = received(1)
    calls: list[float] = []

    async def handler(e: InstanceReceived) -> None:
        assert e == event
        calls.append(time.monotonic())
        raise RuntimeError("a bug in the handler")

    async def scenario() -> list[Any]:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            async with running(broker_url, consumer_of(handler)):
                await eventually(lambda: dead_letter_counts_are(connection, {SORTER_DEAD: 1}))
                calls_when_dead = len(calls)
                # not a hot loop: once dead, the message is delivered no more
                await settled(connection, ONE_DEAD, hold=0.5)
                assert len(calls) == calls_when_dead
            await settled(connection, ONE_DEAD, hold=FINAL_HOLD)
            return await get_all(connection, SORTER_DEAD)

    dead = run(scenario())
    # RabbitMQ 3.10 quorum queue: every nack(requeue=True) increments the message's
    # delivery count, and the return that takes the count past x-delivery-limit
    # dead-letters the message instead of requeueing it. So with a limit of 5 the
    # handler sees the first delivery plus 5 redeliveries: limit + 1 = 6 calls.
    assert len(calls) == SORTER_QUEUE.delivery_limit + 1
    assert len(dead) == 1  # not lost
    assert InstanceReceived.model_validate_json(dead[0].body) == event
    assert dead[0].headers["x-first-death-reason"] == "delivery_limit"
    assert dead[0].headers["x-first-death-queue"] == SORTER


def test_undecodable_messages_are_dead_lettered_without_calling_the_handler(
    broker_url: str,
) -> None:
    good = received(1)
    wrong_schema = AssociationClosed(
        association_id="a",
        calling_ae="PACS01",
        peer_host="10.0.0.7",
        started_at=dt.datetime.now(dt.UTC),
        ended_at=dt.datetime.now(dt.UTC),
        released=True,
        instances_stored=1,
        instances_failed=0,
        bytes_stored=10,
        study_instance_uids=[],
    )
    extra_field = json.dumps({**json.loads(received(2).to_bytes()), "PatientName": "DOE^JOHN"})
    missing_field = json.dumps(
        {k: v for k, v in json.loads(received(3).to_bytes()).items() if k != "size"}
    )
    bad_bodies = [
        b"not json at all",
        b"\xff\xfe\x00 binary",
        b"",
        b"null",
        wrong_schema.to_bytes(),
        extra_field.encode(),
        missing_field.encode(),
    ]
    handled: list[InstanceReceived] = []

    async def handler(e: InstanceReceived) -> None:
        handled.append(e)

    expected = {SORTER: 0, SORTER_DEAD: len(bad_bodies)}

    async def scenario() -> list[Any]:
        async with broker(broker_url) as (connection, publisher):
            for body in bad_bodies:
                await publish_raw(connection, body, InstanceReceived.routing_key)
            await publisher.publish(good)  # behind the bad ones: the consumer must go on
            async with running(broker_url, consumer_of(handler)):
                await eventually(lambda: len(handled) == 1)
                await settled(connection, expected)
            await settled(connection, expected, hold=FINAL_HOLD)
            assert await dead_letter_counts(connection, TOPOLOGY) == with_other_queues_empty(
                {SORTER_DEAD: len(bad_bodies)}
            )
            return await get_all(connection, SORTER_DEAD)

    dead = run(scenario())
    assert handled == [good]
    assert sorted(m.body for m in dead) == sorted(bad_bodies)
    assert {m.headers["x-first-death-reason"] for m in dead} == {"rejected"}


def test_dead_letter_counts_reports_each_dead_letter_queue(broker_url: str) -> None:
    async def never(e: InstanceReceived) -> None:
        raise AssertionError("undecodable messages must not reach the handler")

    async def scenario() -> None:
        async with broker(broker_url) as (connection, _):
            assert await dead_letter_counts(connection, TOPOLOGY) == with_other_queues_empty(
                {SORTER_DEAD: 0}
            )
            for n in range(3):
                await publish_raw(connection, f"junk {n}".encode(), InstanceReceived.routing_key)
            async with running(broker_url, consumer_of(never)):
                await eventually(lambda: dead_letter_counts_are(connection, {SORTER_DEAD: 3}))
            # counting does not consume them
            assert await dead_letter_counts(connection, TOPOLOGY) == with_other_queues_empty(
                {SORTER_DEAD: 3}
            )
            assert await ready_count(connection, SORTER_DEAD) == 3

    run(scenario())


def test_a_transient_error_is_retried_in_process_with_backoff(broker_url: str) -> None:
    event = received(1)
    calls: list[float] = []

    async def handler(e: InstanceReceived) -> None:
        assert e == event
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise TransientError("the catalog is busy")

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            async with running(broker_url, consumer_of(handler)):
                await eventually(lambda: len(calls) == 3)
                await settled(connection, SETTLED_OK)
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)

    run(scenario())
    assert len(calls) == 3
    # TRANSIENT_RETRY_DELAYS begins 0.5 s, 1 s: a backoff, not a hot loop
    assert calls[1] - calls[0] >= 0.45
    assert calls[2] - calls[1] >= 0.95


def test_transient_retries_are_not_redeliveries(
    broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process retries do not spend the delivery limit: after more failures
    than the limit allows, a transient failure that clears still ends acked."""
    # a shorter backoff for this test only (the schedule is module data, read per retry)
    monkeypatch.setattr(shared.broker, "TRANSIENT_RETRY_DELAYS", (0.01,) * 9)
    event = received(1)
    calls = 0
    failures = SORTER_QUEUE.delivery_limit + 1

    async def handler(e: InstanceReceived) -> None:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise TransientError("still busy")

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            async with running(broker_url, consumer_of(handler)):
                await eventually(lambda: calls == failures + 1)
                await settled(connection, SETTLED_OK)
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)

    run(scenario())
    assert calls == failures + 1


# -- consume_batches ------------------------------------------------------------------------


def test_waiting_messages_reach_the_batch_handler_together(broker_url: str) -> None:
    events = [received(n) for n in range(10)]
    batches: list[list[InstanceReceived]] = []

    async def handler(batch: list[InstanceReceived]) -> None:
        batches.append(batch)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            for event in events:
                await publisher.publish(event)
            async with running(broker_url, batch_consumer_of(handler)):  # default options
                await eventually(lambda: sum(map(len, batches)) >= len(events))
                await settled(connection, SETTLED_OK)
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)

    run(scenario())
    handled = [event for batch in batches for event in batch]
    # each exactly once
    assert sorted(e.message_id for e in handled) == sorted(e.message_id for e in events)
    assert max(map(len, batches)) > 1, [len(b) for b in batches]
    assert len(batches) < len(events)


def test_max_batch_bounds_the_batch_size(broker_url: str) -> None:
    events = [received(n) for n in range(10)]
    batches: list[list[InstanceReceived]] = []

    async def handler(batch: list[InstanceReceived]) -> None:
        batches.append(batch)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            for event in events:
                await publisher.publish(event)
            consumer = batch_consumer_of(handler, max_batch=3, max_wait=0.5)
            async with running(broker_url, consumer):
                await eventually(lambda: sum(map(len, batches)) >= len(events))
                await settled(connection, SETTLED_OK)
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)

    run(scenario())
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    handled = [event for batch in batches for event in batch]
    assert handled == events  # and in publishing order


def is_poison(event: InstanceReceived) -> bool:
    return event.calling_ae == "POISON"


def test_a_poison_event_is_dead_lettered_alone_from_its_batch(broker_url: str) -> None:
    events = [received(n) for n in range(6)]
    poison = received(99, calling_ae="POISON")
    events.insert(3, poison)
    calls: list[list[InstanceReceived]] = []
    filed: list[InstanceReceived] = []

    async def handler(batch: list[InstanceReceived]) -> None:
        calls.append(batch)
        if any(map(is_poison, batch)):
            raise PermanentError("cannot file this one")
        filed.extend(batch)

    async def scenario() -> list[Any]:
        async with broker(broker_url) as (connection, publisher):
            for event in events:
                await publisher.publish(event)
            async with running(broker_url, batch_consumer_of(handler, max_wait=0.5)):
                await eventually(lambda: dead_letter_counts_are(connection, {SORTER_DEAD: 1}))
                await settled(connection, ONE_DEAD)
            await settled(connection, ONE_DEAD, hold=FINAL_HOLD)
            return await get_all(connection, SORTER_DEAD)

    dead = run(scenario())
    # the failing batch held the poison among others (else this test proves nothing)
    assert any(map(is_poison, calls[0])) and len(calls[0]) > 1
    assert sorted(e.message_id for e in filed) == sorted(
        e.message_id for e in events if not is_poison(e)
    )
    assert sum(is_poison(e) for batch in calls for e in batch) == 2  # in the batch, then alone
    assert [InstanceReceived.model_validate_json(m.body) for m in dead] == [poison]


def test_a_batch_broken_by_a_bug_settles_the_others_and_dead_letters_the_culprit(
    broker_url: str,
) -> None:
    """As above with a plain exception: the good ones are acked at the first try,
    the culprit goes round the delivery limit alone and ends dead-lettered."""
    events = [received(n) for n in range(4)]
    poison = received(99, calling_ae="POISON")
    events.insert(1, poison)
    filed: list[InstanceReceived] = []
    poison_calls = 0

    async def handler(batch: list[InstanceReceived]) -> None:
        nonlocal poison_calls
        if any(map(is_poison, batch)):
            poison_calls += 1
            raise KeyError("a bug")
        filed.extend(batch)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            for event in events:
                await publisher.publish(event)
            async with running(broker_url, batch_consumer_of(handler, max_wait=0.2)):
                await eventually(lambda: dead_letter_counts_are(connection, {SORTER_DEAD: 1}))
                await settled(connection, ONE_DEAD)
            await settled(connection, ONE_DEAD, hold=FINAL_HOLD)

    run(scenario())
    assert sorted(e.message_id for e in filed) == sorted(
        e.message_id for e in events if not is_poison(e)
    )
    # first delivery: in the batch, then alone; then each of the delivery_limit
    # redeliveries alone (a batch of one is not split again): limit + 2 calls
    assert poison_calls == SORTER_QUEUE.delivery_limit + 2


# -- stopping and connection loss ---------------------------------------------------------


def test_cancelling_the_consumer_finishes_and_acks_the_batch_in_hand(broker_url: str) -> None:
    """A service stopping mid-batch (SIGTERM) neither loses nor redoes that batch."""
    event = received(1)
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[InstanceReceived] = []

    async def handler(e: InstanceReceived) -> None:
        started.set()
        await release.wait()
        finished.append(e)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            consumer_connection = await connect(broker_url, name="test-consumer")
            task = asyncio.create_task(consumer_of(handler)(consumer_connection))
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            await asyncio.sleep(0.1)
            assert not task.done()  # waits for the handler rather than abandoning it
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
            await consumer_connection.close()
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)

    run(scenario())
    assert finished == [event]


async def close_connections_named(url: str, name: str) -> None:
    """What a broker restart or a network blip does to a client: close its connection."""
    # list_connections lists every virtual host's: another test's connection of that name
    # must be left alone.
    out = await rabbitmqctl("list_connections", "pid", "vhost", "client_properties")
    rows = [line.split("\t") for line in out.splitlines()]
    pids = [r[0] for r in rows if len(r) == 3 and r[1] == vhost_of(url) and f'"{name}"' in r[2]]
    assert pids, out
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "closed by the test")


# connect() uses aio_pika's robust connection, which reconnects after 5 s.
RECONNECT_WITHIN = 12.0


def test_an_idle_consumer_resumes_after_its_connection_is_lost(broker_url: str) -> None:
    handled: list[InstanceReceived] = []

    async def handler(e: InstanceReceived) -> None:
        handled.append(e)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            async with running(broker_url, consumer_of(handler)) as task:
                await publisher.publish(received(1))
                await eventually(lambda: len(handled) == 1)
                await close_connections_named(broker_url, "test-consumer")
                await publisher.publish(received(2))
                await eventually(lambda: len(handled) == 2, timeout=RECONNECT_WITHIN)
                assert not task.done()
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)

    run(scenario())


def test_a_consumer_survives_losing_its_connection_during_a_batch(broker_url: str) -> None:
    event = received(1)
    calls: list[InstanceReceived] = []
    release = asyncio.Event()

    async def handler(e: InstanceReceived) -> None:
        calls.append(e)
        if len(calls) == 1:
            await release.wait()

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            await publisher.publish(event)
            async with running(broker_url, consumer_of(handler)) as task:
                await eventually(lambda: len(calls) == 1)
                await close_connections_named(broker_url, "test-consumer")
                release.set()  # the handler completes after its channel is gone
                # the unacked message comes back and is handled again, once reconnected
                await eventually(lambda: len(calls) == 2 or task.done(), RECONNECT_WITHIN)
                assert not task.done(), task.exception()
                await settled(connection, SETTLED_OK)
            await settled(connection, SETTLED_OK, hold=FINAL_HOLD)

    run(scenario())
    assert calls == [event, event]


def test_a_cancelled_consumer_takes_no_more_messages(broker_url: str) -> None:
    handled: list[InstanceReceived] = []

    async def handler(e: InstanceReceived) -> None:
        handled.append(e)

    async def scenario() -> None:
        async with broker(broker_url) as (connection, publisher):
            # the consumer shares the publisher's connection, as the sorter's does
            task = asyncio.create_task(consumer_of(handler)(connection))
            await publisher.publish(received(1))
            await eventually(lambda: len(handled) == 1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await publisher.publish(received(2))
            # nobody consumes any more: the message must wait, ready, for the next consumer
            await settled(connection, {SORTER: 1, SORTER_DEAD: 0}, timeout=30)
            assert len(handled) == 1

    run(scenario())


# -- connect ----------------------------------------------------------------------------


def test_connect_keeps_retrying_and_never_logs_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "Sup3r-s3cret-pw"
    port = free_port()
    url = f"amqp://dcmdb:{password}@127.0.0.1:{port}/dcmdb"
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        with pytest.raises(TimeoutError):  # still trying: it neither returned nor gave up
            await asyncio.wait_for(connect(url, name="test"), 2.5)

    asyncio.run(scenario())

    ours = [r for r in caplog.records if r.name == "shared.broker_connection"]
    # attempts at t=0 and t=1 s; the next one is due at t=1+2=3 s, after the cancel
    assert len(ours) == 2, [r.getMessage() for r in ours]
    for record in ours:
        line = record.getMessage()
        assert record.levelno == logging.WARNING
        assert "\n" not in line
        assert f"127.0.0.1:{port}" in line  # says where it tried
        assert "dcmdb" in line  # and as whom
        assert "retrying" in line
    assert "retrying in 1 s" in ours[0].getMessage()
    assert "retrying in 2 s" in ours[1].getMessage()
    # no line from any logger (aio_pika's and aiormq's included) shows the password
    for record in caplog.records:
        assert password not in record.getMessage()
    assert password not in caplog.text


def test_connect_takes_the_first_broker_of_several_that_answers(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> int | None:
        with refused_port() as down:
            urls = f"amqp://guest:guest@127.0.0.1:{down}/x, {broker_url}"
            connection = await connect(urls, name="test")
        try:
            assert connection.connected.is_set()
            return connection.url.port  # type: ignore[attr-defined, no-any-return]
        finally:
            await connection.close()

    assert run(scenario()) == 5672
    tried = [r.getMessage() for r in caplog.records if r.name == "shared.broker_connection"]
    assert len(tried) == 1 and "trying the next" in tried[0], tried


def test_a_connection_cancelled_while_it_connects_leaves_nothing_trying(broker_url: str) -> None:
    """A service stopped while it connects (the receiver's announcer right after its start)
    must not leave aio-pika reconnecting in a task of its own: its process would not end."""

    async def scenario() -> list[asyncio.Task[Any]]:
        attempt = asyncio.create_task(connect(broker_url, name="test"))
        await asyncio.sleep(0)  # the attempt is under way
        attempt.cancel()
        async with asyncio.timeout(30):
            with pytest.raises(asyncio.CancelledError):
                await attempt
        await asyncio.sleep(0.1)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    left = asyncio.run(scenario())
    assert left == [], left

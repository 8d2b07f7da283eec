"""shared.broker against a RabbitMQ cluster of three nodes (the `rabbitmq_cluster` fixture,
tests/broker_cluster.py), with ``DCMDB_BROKER_URL`` naming all three: quorum queues have a
replica on every node, and publishers and consumers move to another node when theirs is
killed, losing nothing.

They take nodes of the session's own cluster away and restart them; the machine's RabbitMQ,
which the other tests use, is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from aio_pika.abc import AbstractRobustConnection

from shared.broker import Publisher, connect, consume, declare_topology
from shared.messages import ALL_QUEUES, SORTER_QUEUE, InstanceReceived, Topology
from tests.broker_cluster import Cluster, Node
from tests.conftest import OWN_RABBITMQ
from tests.support import eventually

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup(shared_by=OWN_RABBITMQ)]

T = TypeVar("T")
TOPOLOGY = Topology()


def run(coro: Coroutine[Any, Any, T], timeout: float = 300) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def vhost_of(urls: str) -> str:
    return urls.split(",")[0].rsplit("/", 1)[1]


def node_of(cluster: Cluster, connection: AbstractRobustConnection) -> Node:
    """The node a connection is on now."""
    port = connection.url.port  # type: ignore[attr-defined]
    return next(node for node in cluster.nodes if node.amqp_port == port)


def received(n: int) -> InstanceReceived:
    return InstanceReceived(
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        study_instance_uid="1.2.826.0.1.3680043.8.498.100",
        series_instance_uid="1.2.826.0.1.3680043.8.498.101",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        incoming_path=f"incoming/{n}.dcm",
        size=1000 + n,
        received_at=dt.datetime.now(dt.UTC),
        calling_ae="PACS01",
        peer_host="10.0.0.7",
        association_id="assoc-1",
    )


async def publish_until_confirmed(publisher: Publisher, event: InstanceReceived) -> None:
    """As the receiver's announcer does: again, after a pause, until the broker confirms."""
    while True:
        try:
            await publisher.publish(event)
            return
        except Exception:  # noqa: BLE001 - the node went away: the publisher tries again
            await asyncio.sleep(0.2)


def test_quorum_queues_have_a_replica_on_every_node(
    rabbitmq_cluster: Cluster, cluster_urls: str
) -> None:
    async def declare() -> None:
        connection = await connect(cluster_urls, name="test")
        try:
            await declare_topology(await connection.channel(), TOPOLOGY)
        finally:
            await connection.close()

    run(declare())
    members = rabbitmq_cluster.queue_members(vhost_of(cluster_urls))
    every_node = {node.node for node in rabbitmq_cluster.nodes}
    for queue in ALL_QUEUES:
        assert members[TOPOLOGY.queue_name(queue)] == every_node
        assert members[TOPOLOGY.dead_letter_name(queue)] == every_node


def test_a_consumer_and_publishers_move_to_another_node_when_theirs_is_killed(
    rabbitmq_cluster: Cluster, cluster_urls: str
) -> None:
    """A consumer and a publisher (16 publishes at a time, as the receiver's) start on the
    first node, which leads the queues; it is killed while they work and restarted, then
    the node they moved to is killed: both go on each time, and every confirmed event
    reaches the consumer."""
    published: set[str] = set()
    handled: list[str] = []
    killed: list[Node] = []  # each time, the node the consumer was on
    numbers = itertools.count()

    async def handler(event: InstanceReceived) -> None:
        handled.append(event.sop_instance_uid)

    async def publishing(publisher: Publisher, stop: asyncio.Event) -> None:
        while not stop.is_set():
            event = received(next(numbers))
            await publish_until_confirmed(publisher, event)
            published.add(event.sop_instance_uid)
            await asyncio.sleep(0.02)

    async def both_at_work() -> None:
        before_published, before_handled = len(published), len(set(handled))
        await eventually(lambda: len(published) > before_published + 100, 60, "publishing")
        await eventually(lambda: len(set(handled)) > before_handled + 100, 60, "consuming")

    async def scenario() -> None:
        consumer_connection = await connect(cluster_urls, name="test-consumer")
        publisher_connection = await connect(cluster_urls, name="test-publisher")
        consuming = asyncio.create_task(
            consume(consumer_connection, TOPOLOGY, SORTER_QUEUE, InstanceReceived, handler)
        )
        stop = asyncio.Event()
        publishers: list[asyncio.Task[None]] = []
        try:
            publisher = Publisher(publisher_connection, TOPOLOGY)
            await publisher.start()
            first = node_of(rabbitmq_cluster, consumer_connection)
            assert node_of(rabbitmq_cluster, publisher_connection) == first
            publishers = [asyncio.create_task(publishing(publisher, stop)) for _ in range(16)]
            for _ in range(2):
                await both_at_work()
                killed.append(await kill_where(rabbitmq_cluster, consumer_connection))
            await both_at_work()
            stop.set()
            await asyncio.gather(*publishers)
            await eventually(lambda: set(handled) == published, 120, "every event handled")
            assert not consuming.done()
            assert consumer_connection.connected.is_set()
        finally:
            stop.set()
            for task in (*publishers, consuming):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await consumer_connection.close()
            await publisher_connection.close()

    run(scenario())
    assert set(handled) == published  # nothing lost; a redelivery may repeat one
    assert killed[0] != killed[1]  # the second kill struck the node it had moved to


def test_publishers_go_on_when_the_node_leading_their_queue_is_killed(
    rabbitmq_cluster: Cluster, cluster_urls: str
) -> None:
    """16 publishes at a time, as the receiver's, with no consumer yet: their node, where
    the queue's leader is, is killed; they go on on another node, and every confirmed
    event is in the queue."""
    published: set[str] = set()
    numbers = itertools.count()

    async def publishing(publisher: Publisher, stop: asyncio.Event) -> None:
        while not stop.is_set():
            event = received(next(numbers))
            await publish_until_confirmed(publisher, event)
            published.add(str(event.message_id))

    async def scenario() -> set[str]:
        connection = await connect(cluster_urls, name="test-publisher")
        stop = asyncio.Event()
        publishers: list[asyncio.Task[None]] = []
        try:
            publisher = Publisher(connection, TOPOLOGY)
            await publisher.start()
            publishers = [asyncio.create_task(publishing(publisher, stop)) for _ in range(16)]
            await eventually(lambda: len(published) > 2000, 60, "publishing")
            # at once, while the nodes are busy: the others notice the loss after the
            # publisher is back on one of them
            node = node_of(rabbitmq_cluster, connection)
            await asyncio.to_thread(rabbitmq_cluster.kill, node)
            after_the_kill = len(published)
            await eventually(lambda: len(published) > after_the_kill + 1000, 60, "publishing")
            stop.set()
            await asyncio.gather(*publishers)
            await asyncio.to_thread(rabbitmq_cluster.restart, node)
            return await queued_ids(connection)
        finally:
            stop.set()
            for task in publishers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await connection.close()

    queued = run(scenario())
    assert published <= queued  # nothing confirmed is missing; a retried one may be twice


async def queued_ids(connection: AbstractRobustConnection) -> set[str]:
    """The message ids of what waits in the sorter's queue, taken out of it."""
    channel = await connection.channel()
    queue = await channel.get_queue(TOPOLOGY.queue_name(SORTER_QUEUE), ensure=False)
    ids = set()
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        ids.add(str(message.message_id))
    await channel.close()
    return ids


async def kill_where(cluster: Cluster, connection: AbstractRobustConnection) -> Node:
    """Kill the node the connection is on, once that takes no quorum queue's majority
    (the node killed before is back and caught up); wait for the connection to be back on
    another node; start the killed one again. The node killed."""
    node = node_of(cluster, connection)
    await asyncio.to_thread(cluster.await_quorum_safe, node)
    await asyncio.to_thread(cluster.kill, node)
    await eventually(lambda: node_of(cluster, connection) != node, 60, "a move to another node")
    await eventually(connection.connected.is_set, 60, "the connection back")
    await asyncio.to_thread(cluster.restart, node)
    return node

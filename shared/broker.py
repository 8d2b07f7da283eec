"""The RabbitMQ layer: topology, confirmed publishing, and the ack policy.

Topology of an installation (declared by every service that connects, so that no event
is ever published before its queue exists), named by ``messages.Topology``; with the
default installation ``dcmdb``:

- ``dcmdb.events``: a durable topic exchange, routing key = event name;
- one durable quorum queue per consumer (``messages.ALL_QUEUES``: ``dcmdb.sorter``,
  ``dcmdb.converter``, ``dcmdb.notifier``), with a delivery limit and a dead-letter exchange;
- ``dcmdb.dead-letter``: a direct exchange routing each dead letter to
  ``<queue>.dead``, where it stays until an admin looks at it.

Connecting, to one broker or to the nodes of a cluster, is ``shared.broker_connection``'s
(`connect`, also importable from here); the channels of its connection declare the topology
again and its consumers consume again on whichever node it reaches.

Ack policy, in one place (``_settle_batch``): success -> ack; ``PermanentError`` or
an undecodable message -> reject without requeue (dead-lettered at once);
``TransientError`` -> retried in process with backoff, then requeued; any other
exception -> requeued, which the delivery limit turns into a dead letter if it
keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import (
    AMQPConnectionError,
    ChannelClosed,
    ChannelInvalidStateError,
    DeliveryError,
)
from pamqp.commands import Basic
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from shared.broker_connection import connect as connect
from shared.errors import PermanentError, TransientError
from shared.logs import about
from shared.messages import ALL_QUEUES, Event, Queue, Topology

log = logging.getLogger(__name__)

PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker

EventT = TypeVar("EventT", bound=Event)

TRANSIENT_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30, 30, 30)

EVENTS_PUBLISHED = Counter(
    "dcmdb_events_published_total", "Events the broker confirmed, by routing key", ["event"]
)
EVENTS_FAILED = Counter(
    "dcmdb_events_publish_failures_total",
    "Publishing attempts the broker did not confirm (the publisher retries them)",
    ["event"],
)


def count_from_zero(*kinds: type[Event]) -> None:
    """Export the publishing counters of these events at 0 before the first is published,
    so that a failure shows up as an increase from 0 and dashboards find the series."""
    for kind in kinds:
        EVENTS_PUBLISHED.labels(kind.routing_key)
        EVENTS_FAILED.labels(kind.routing_key)


async def declare_topology(channel: AbstractChannel, topology: Topology) -> AbstractExchange:
    """Declare the installation's exchanges, queues and dead-letter queues; return its
    events exchange."""
    events = await channel.declare_exchange(
        topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for queue in ALL_QUEUES:
        dlq = await channel.declare_queue(
            topology.dead_letter_name(queue), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dead, routing_key=topology.queue_name(queue))
        declared = await channel.declare_queue(
            topology.queue_name(queue), durable=True, arguments=queue_arguments(topology, queue)
        )
        for key in queue.routing_keys:
            await declared.bind(events, routing_key=key)
    return events


def queue_arguments(topology: Topology, queue: Queue) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": queue.delivery_limit,
        "x-dead-letter-exchange": topology.dead_letter_exchange,
        "x-dead-letter-routing-key": topology.queue_name(queue),
    }


class Publisher:
    """Publishes events as persistent messages and waits for the broker's confirm.

    Every received instance is one event, so this is a hot path: it publishes
    on the channel's AMQP layer (aiormq) directly, which costs half of what
    building an aio-pika ``Message`` and going through ``Exchange.publish`` does.
    """

    def __init__(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology
        self._channel: AbstractChannel | None = None
        self._renewing = asyncio.Lock()

    async def start(self) -> None:
        self._channel = await self._connection.channel(publisher_confirms=True)
        await declare_topology(self._channel, self._topology)

    async def publish(self, event: Event) -> None:
        """Return once the broker has confirmed the message; raise if it did not."""
        assert self._channel is not None, "Publisher.start() first"
        robust = self._channel
        channel = await robust.get_underlay_channel()
        properties = Basic.Properties(
            delivery_mode=PERSISTENT,
            content_type="application/json",
            message_id=str(event.message_id),
            message_type=event.routing_key,
            timestamp=event.occurred_at,
        )
        try:
            confirmation = await channel.basic_publish(
                event.to_bytes(),
                exchange=self._topology.events_exchange,
                routing_key=event.routing_key,
                properties=properties,
            )
            if not isinstance(confirmation, Basic.Ack):
                raise DeliveryError(None, confirmation)  # type: ignore[arg-type]
        except DeliveryError:  # a negative confirm
            EVENTS_FAILED.labels(event.routing_key).inc()
            await self._renew(robust)
            raise
        except Exception:
            EVENTS_FAILED.labels(event.routing_key).inc()
            raise
        EVENTS_PUBLISHED.labels(event.routing_key).inc()

    async def _renew(self, refused: AbstractChannel) -> None:
        """Replace a channel the broker refused a message on (a negative confirm) with a new
        one, so that the next try goes through a channel of its own. On a cluster, a channel
        restored on another node before that node noticed a queue's leader had gone with the
        lost one is refused every message from then on (RabbitMQ 3.10), while a new channel
        is served; where the queue itself cannot take messages, the new one is refused too,
        and the caller tries again as it does after any failure."""
        async with self._renewing:
            if self._channel is not refused:
                return  # a publish refused beside this one renewed it already
            self._channel = await self._connection.channel(publisher_confirms=True)
        log.warning("the broker refused a message; publishing on a new channel")
        with contextlib.suppress(Exception):
            await refused.close()


# What a queue's messages are: one event class, or several told apart (`SERIES_OUTCOMES`).
Model = type[EventT] | TypeAdapter[EventT]
Handler = Callable[[EventT], Awaitable[None]]
BatchHandler = Callable[[list[EventT]], Awaitable[None]]


async def consume(
    connection: AbstractRobustConnection,
    topology: Topology,
    queue: Queue,
    model: Model[EventT],
    handler: Handler[EventT],
    *,
    prefetch: int = 16,
) -> None:
    """Deliver each message of the installation's ``queue`` to ``handler``; run until
    cancelled."""

    async def one_at_a_time(events: list[EventT]) -> None:
        await handler(events[0])

    await consume_batches(
        connection, topology, queue, model, one_at_a_time, prefetch=prefetch, max_batch=1
    )


async def consume_batches(
    connection: AbstractRobustConnection,
    topology: Topology,
    queue: Queue,
    model: Model[EventT],
    handler: BatchHandler[EventT],
    *,
    prefetch: int = 64,
    max_batch: int = 32,
    max_wait: float = 0.01,
) -> None:
    """Deliver the messages of the installation's ``queue`` to ``handler`` in batches; run
    until cancelled.

    A batch is what has arrived, up to ``max_batch`` messages, waiting at most
    ``max_wait`` seconds after the first. Cancelling stops the consumer between
    batches: the batch in hand is finished and settled first. When a batch fails for any reason
    but a transient one, its messages are settled one by one, so that a bad
    message is dead-lettered alone.
    """
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=max(prefetch, max_batch))
    await declare_topology(channel, topology)
    # ensure=True hands back the queue the robust channel tracks, so the
    # consumer is restored when the connection comes back.
    declared = await channel.get_queue(topology.queue_name(queue))
    arrivals: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    await declared.consume(arrivals.put)
    stopping = asyncio.Event()
    try:
        while True:
            batch = await _next_batch(arrivals, max_batch, max_wait)
            events = []
            for message in batch:
                event = await _decode(message, model)
                if event is not None:
                    events.append((message, event))
            if not events:
                continue
            settling = asyncio.ensure_future(_settle_batch(events, handler, stopping))
            try:
                await asyncio.shield(settling)
            except asyncio.CancelledError:
                stopping.set()
                await settling  # finish and settle the batch in hand, then stop
                raise
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _next_batch(
    arrivals: asyncio.Queue[AbstractIncomingMessage], max_batch: int, max_wait: float
) -> list[AbstractIncomingMessage]:
    batch = [await arrivals.get()]
    deadline = asyncio.get_running_loop().time() + max_wait
    while len(batch) < max_batch:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(arrivals.get(), remaining))
        except TimeoutError:
            break
    return batch


async def _decode(message: AbstractIncomingMessage, model: Model[EventT]) -> EventT | None:
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_json(message.body)
        return model.model_validate_json(message.body)
    except ValidationError as exc:
        log.error(
            "dead-lettering undecodable message %s: %s",
            message.message_id,
            exc,
            extra={"message_id": message.message_id},
        )
        await message.reject(requeue=False)
        return None


async def _settle_batch(
    events: list[tuple[AbstractIncomingMessage, EventT]],
    handler: BatchHandler[EventT],
    stopping: asyncio.Event,
) -> None:
    try:
        await _handle_batch(events, handler, stopping)
    except (ChannelInvalidStateError, ChannelClosed, AMQPConnectionError):
        # The connection went away, before or while a message was settled (an ack written
        # as the broker closes the connection raises ConnectionClosed): the broker
        # redelivers what was not acknowledged.
        log.warning("lost the broker while settling %d message(s); they come again", len(events))


async def _handle_batch(
    events: list[tuple[AbstractIncomingMessage, EventT]],
    handler: BatchHandler[EventT],
    stopping: asyncio.Event,
) -> None:
    # One message in hand: whatever is logged while handling it concerns it.
    context = about(events[0][1]) if len(events) == 1 else contextlib.nullcontext()
    with context:
        await _retry_transient(events, handler, stopping)


async def _retry_transient(
    events: list[tuple[AbstractIncomingMessage, EventT]],
    handler: BatchHandler[EventT],
    stopping: asyncio.Event,
) -> None:
    for delay in (*TRANSIENT_RETRY_DELAYS, None):
        try:
            await handler([event for _, event in events])
        except TransientError as exc:
            if delay is None or stopping.is_set():
                log.warning("requeueing %d message(s): %s", len(events), exc)
                for message, _ in events:
                    await message.nack(requeue=True)
                return
            log.warning("%s; retrying in %s s", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            continue
        except Exception as exc:
            if len(events) == 1:
                await _reject_or_requeue(*events[0], exc)
                return
            log.warning("a batch of %d failed; settling its messages one by one", len(events))
            for pair in events:
                await _handle_batch([pair], handler, stopping)
            return
        for message, _ in events:
            await message.ack()
        return


async def _reject_or_requeue(
    message: AbstractIncomingMessage, event: Event, error: Exception
) -> None:
    """A single message that failed for a reason other than a transient one."""
    name = type(event).__name__
    if isinstance(error, PermanentError):
        log.error("dead-lettering %s %s: %s", name, event.message_id, error)
        await message.reject(requeue=False)
    else:
        log.error("requeueing %s %s after an error", name, event.message_id, exc_info=error)
        await message.nack(requeue=True)


async def dead_letter_counts(
    connection: AbstractRobustConnection, topology: Topology
) -> dict[str, int]:
    """How many messages wait in each dead-letter queue of the installation."""
    depths = await queue_depths(connection, topology)
    return {name: depths[name] for name in topology.dead_letter_names}


async def queue_depths(connection: AbstractRobustConnection, topology: Topology) -> dict[str, int]:
    """How many messages wait in each queue and dead-letter queue of the installation, by
    queue name.

    A passive declare answers with the ready messages: those not yet delivered to a
    consumer (a consumer's prefetched, unacknowledged ones are not counted).
    """
    channel = await connection.channel()
    try:
        await declare_topology(channel, topology)
        depths = {}
        for queue in ALL_QUEUES:
            for name in (topology.queue_name(queue), topology.dead_letter_name(queue)):
                declared = await channel.declare_queue(name, durable=True, passive=True)
                depths[name] = declared.declaration_result.message_count or 0
        return depths
    finally:
        with contextlib.suppress(Exception):
            await channel.close()

"""The RabbitMQ layer: topology, confirmed publishing, and the ack policy.

Topology (declared by every service that connects, so that no event is ever
published before its queue exists):

- ``dcmdb.events``: a durable topic exchange, routing key = event name;
- one durable quorum queue per consumer (``messages.ALL_QUEUES``), with a
  delivery limit and a dead-letter exchange;
- ``dcmdb.dead-letter``: a direct exchange routing each dead letter to
  ``<queue>.dead``, where it stays until an admin looks at it.

Ack policy, in one place (``_settle``): success -> ack; ``PermanentError`` or
an undecodable message -> reject without requeue (dead-lettered at once);
``TransientError`` -> retried in process with backoff, then requeued; any other
exception -> requeued, which the delivery limit turns into a dead letter if it
keeps failing.
"""

from __future__ import annotations

import asyncio
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
from pydantic import ValidationError

from shared.errors import PermanentError, TransientError
from shared.messages import (
    ALL_QUEUES,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    Event,
    Queue,
)

log = logging.getLogger(__name__)

EventT = TypeVar("EventT", bound=Event)

TRANSIENT_RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30, 30, 30)


async def connect(url: str, *, name: str) -> AbstractRobustConnection:
    """Connect, retrying with one clear line per attempt until the broker answers."""
    delay = 1.0
    while True:
        try:
            return await aio_pika.connect_robust(url, client_properties={"connection_name": name})
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            log.warning(
                "RabbitMQ at %s is not reachable (%s); retrying in %.0f s",
                _redact(url),
                exc.__class__.__name__,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _redact(url: str) -> str:
    """The broker URL without its password, for log lines."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """Declare exchanges, queues and dead-letter queues; return the events exchange."""
    events = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dead = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    for queue in ALL_QUEUES:
        dlq = await channel.declare_queue(
            queue.dead_letter_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dlq.bind(dead, routing_key=queue.name)
        declared = await channel.declare_queue(
            queue.name, durable=True, arguments=queue_arguments(queue)
        )
        for key in queue.routing_keys:
            await declared.bind(events, routing_key=key)
    return events


def queue_arguments(queue: Queue) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": queue.delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue.name,
    }


class Publisher:
    """Publishes events as persistent messages and waits for the broker's confirm."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await declare_topology(channel)

    async def publish(self, event: Event) -> None:
        """Return once the broker has confirmed the message; raise if it did not."""
        assert self._exchange is not None, "Publisher.start() first"
        message = aio_pika.Message(
            event.to_bytes(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
            message_id=str(event.message_id),
            type=event.routing_key,
            timestamp=event.occurred_at,
        )
        await self._exchange.publish(message, routing_key=event.routing_key, mandatory=True)


Handler = Callable[[EventT], Awaitable[None]]


async def consume(
    connection: AbstractRobustConnection,
    queue: Queue,
    model: type[EventT],
    handler: Handler[EventT],
    *,
    prefetch: int = 16,
) -> None:
    """Deliver each message of ``queue`` to ``handler``; run until cancelled."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    await declare_topology(channel)
    declared = await channel.get_queue(queue.name, ensure=False)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await _settle(message, model, handler)

    await declared.consume(on_message)
    await asyncio.Future()  # consume until the task is cancelled


async def _settle(
    message: AbstractIncomingMessage, model: type[EventT], handler: Handler[EventT]
) -> None:
    try:
        event = model.model_validate_json(message.body)
    except ValidationError as exc:
        log.error("dead-lettering undecodable message %s: %s", message.message_id, exc)
        await message.reject(requeue=False)
        return
    for delay in (*TRANSIENT_RETRY_DELAYS, None):
        try:
            await handler(event)
        except PermanentError as exc:
            log.error("dead-lettering %s %s: %s", model.__name__, event.message_id, exc)
            await message.reject(requeue=False)
            return
        except TransientError as exc:
            if delay is None:
                log.warning("requeueing %s %s: %s", model.__name__, event.message_id, exc)
                await message.nack(requeue=True)
                return
            log.warning("%s; retrying in %s s", exc, delay)
            await asyncio.sleep(delay)
            continue
        except Exception:
            log.exception("requeueing %s %s after an error", model.__name__, event.message_id)
            await message.nack(requeue=True)
            return
        await message.ack()
        return


async def dead_letter_counts(connection: AbstractRobustConnection) -> dict[str, int]:
    """How many messages wait in each dead-letter queue."""
    channel = await connection.channel()
    await declare_topology(channel)
    counts = {}
    for queue in ALL_QUEUES:
        declared = await channel.declare_queue(queue.dead_letter_name, durable=True, passive=True)
        counts[queue.dead_letter_name] = declared.declaration_result.message_count or 0
    await channel.close()
    return counts

"""Count, show or requeue dead-lettered messages.

Counts every <queue>.dead queue, where a message waits for an admin once it failed for
good or too often. With --show N, also prints the first N messages of each (why they died,
their type and message ID) and puts them back untouched. --requeue sends them all back to
their queue for another try, once whatever made them fail is fixed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from services.commands.parsing import command_parser
from shared.broker import connect, dead_letter_counts
from shared.messages import ALL_QUEUES, Topology
from shared.settings import CommonSettings, load_settings


def main(argv: list[str]) -> None:
    parser = command_parser("dcmdb dead-letters", __doc__)  # the docstring is its --help
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print N of each")
    parser.add_argument("--requeue", action="store_true", help="send them back for a retry")
    args = parser.parse_args(argv)
    settings = load_settings(CommonSettings)
    asyncio.run(_report(settings.broker_url, settings.topology, args.show, args.requeue))


async def _report(broker_url: str, topology: Topology, show: int, requeue: bool) -> None:
    connection = await connect(broker_url, name="dcmdb-dead-letters")
    try:
        for name, count in (await dead_letter_counts(connection, topology)).items():
            print(f"{name}: {count} message(s)")
        channel = await connection.channel()
        events = await channel.get_exchange(topology.events_exchange)
        for queue in ALL_QUEUES:
            dead = await channel.get_queue(topology.dead_letter_name(queue))
            if show:
                await _show(dead, show)
            if requeue:
                moved = 0
                while (message := await dead.get(no_ack=False, fail=False)) is not None:
                    await events.publish(_again(message), routing_key=message.type or "")
                    await message.ack()
                    moved += 1
                print(f"{dead.name}: {moved} message(s) sent back")
    finally:
        await connection.close()


async def _show(dead: AbstractQueue, count: int) -> None:
    held = []
    for _ in range(count):
        message = await dead.get(no_ack=False, fail=False)
        if message is None:
            break
        held.append(message)
        print(json.dumps({"type": message.type, "id": message.message_id, "why": _why(message)}))
    for message in held:
        await message.nack(requeue=True)


def _why(message: AbstractIncomingMessage) -> str:
    """The reason RabbitMQ gives in the x-death header: rejected, delivery_limit, ..."""
    deaths = message.headers.get("x-death")
    first: Any = deaths[0] if isinstance(deaths, list) and deaths else None
    return str(first.get("reason", "?")) if isinstance(first, dict) else "?"


def _again(message: AbstractIncomingMessage) -> aio_pika.Message:
    return aio_pika.Message(
        message.body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        message_id=message.message_id,
        type=message.type,
    )

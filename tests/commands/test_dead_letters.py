"""``dcmdb dead-letters``: an admin can count, read and requeue what failed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aio_pika
import pytest

from shared.broker import Publisher, connect, declare_topology
from shared.messages import SORTER_QUEUE, InstanceReceived, Topology
from tests.conftest import REPO
from tests.shared.test_messages import SAMPLES

pytestmark = pytest.mark.integration

TOPOLOGY = Topology()  # the default installation's
SORTER = TOPOLOGY.queue_name(SORTER_QUEUE)
SORTER_DEAD = TOPOLOGY.dead_letter_name(SORTER_QUEUE)


def dead_letters(broker_url: str, *args: str) -> str:
    env = {**os.environ, "DCMDB_BROKER_URL": broker_url}
    result = subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "dead-letters", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


async def reject_one(broker_url: str, event: InstanceReceived) -> None:
    connection = await connect(broker_url, name="test")
    publisher = Publisher(connection, TOPOLOGY)
    await publisher.start()
    await publisher.publish(event)
    channel = await connection.channel()
    await declare_topology(channel, TOPOLOGY)
    queue = await channel.get_queue(SORTER)
    for _ in range(50):
        message = await queue.get(fail=False)
        if message:
            await message.reject(requeue=False)
            break
        await asyncio.sleep(0.1)
    await connection.close()


async def depth(broker_url: str, name: str) -> int:
    connection = await aio_pika.connect(broker_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(name, passive=True)
    await connection.close()
    return queue.declaration_result.message_count or 0


def test_dead_letters_are_counted_shown_and_requeued(broker_url: str) -> None:
    event = SAMPLES[InstanceReceived]
    assert isinstance(event, InstanceReceived)
    asyncio.run(reject_one(broker_url, event))
    shown = dead_letters(broker_url, "--show", "5")
    assert f"{SORTER_DEAD}: 1 message(s)" in shown
    assert str(event.message_id) in shown and "rejected" in shown
    assert asyncio.run(depth(broker_url, SORTER_DEAD)) == 1  # only looked at
    dead_letters(broker_url, "--requeue")
    assert asyncio.run(depth(broker_url, SORTER_DEAD)) == 0
    assert asyncio.run(depth(broker_url, SORTER)) == 1

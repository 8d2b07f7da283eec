"""Several installations on one RabbitMQ: each has its own exchanges and queues
(``DCMDB_INSTALLATION``), so none takes another's events or dead letters."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import ValidationError

from shared.broker import Publisher, connect, consume, dead_letter_counts
from shared.errors import ConfigurationError, PermanentError
from shared.messages import ALL_QUEUES, SORTER_QUEUE, InstanceReceived, Topology
from shared.settings import CommonSettings, load_settings
from tests.conftest import REPO
from tests.shared.test_broker import eventually, list_queues, ready_count, received, run, running

ALPHA, BETA = Topology(installation="alpha"), Topology(installation="beta")
BAD_NAMES = ["", "two words", "dots.in.it", "slash/ed", "ümlaut", "x" * 33, "new\nline"]
QUIET = 1.0  # seconds in which an event that went astray would have arrived


def test_the_default_installation_keeps_the_names_dcmdb_always_had() -> None:
    topology = load_settings(CommonSettings).topology
    assert topology == Topology()
    assert topology.events_exchange == "dcmdb.events"
    assert topology.dead_letter_exchange == "dcmdb.dead-letter"
    assert [topology.queue_name(q) for q in ALL_QUEUES] == [
        "dcmdb.sorter",
        "dcmdb.converter",
        "dcmdb.notifier",
        "dcmdb.bids",
    ]
    assert topology.dead_letter_names == (
        "dcmdb.sorter.dead",
        "dcmdb.converter.dead",
        "dcmdb.notifier.dead",
        "dcmdb.bids.dead",
    )


def test_two_installations_share_no_name() -> None:
    def names(topology: Topology) -> set[str]:
        queues = {topology.queue_name(q) for q in ALL_QUEUES} | set(topology.dead_letter_names)
        return queues | {topology.events_exchange, topology.dead_letter_exchange}

    assert not names(ALPHA) & names(BETA)
    assert all(name.startswith("alpha.") for name in names(ALPHA))


@pytest.mark.parametrize("name", ["alpha", "lab-2", "Site_B", "x" * 32])
def test_a_short_name_names_an_installation(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCMDB_INSTALLATION", name)
    assert load_settings(CommonSettings).topology == Topology(installation=name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_an_invalid_installation_name_is_refused(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DCMDB_INSTALLATION", name)
    with pytest.raises(ConfigurationError) as error:
        load_settings(CommonSettings)
    assert "DCMDB_INSTALLATION" in str(error.value) and "letters, digits" in str(error.value)
    with pytest.raises(ValidationError):
        Topology(installation=name)


def test_a_service_with_an_invalid_installation_name_stops_with_one_line(tmp_path: Path) -> None:
    result = dead_letters_command("amqp://guest:guest@127.0.0.1:1/", "no.dots", tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "DCMDB_INSTALLATION" in result.stderr


# -- on the real broker ------------------------------------------------------------------


def dead_letters_command(
    broker_url: str, installation: str, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    env = {**clean, "PYTHONPATH": str(REPO), "DCMDB_DATA_DIR": str(cwd)}
    env |= {"DCMDB_BROKER_URL": broker_url, "DCMDB_INSTALLATION": installation}
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "dead-letters", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


Consumer = Callable[[AbstractRobustConnection], Coroutine[Any, Any, None]]


def sorter_consumer(
    topology: Topology, handler: Callable[[InstanceReceived], Awaitable[None]]
) -> Consumer:
    """What the installation's sorter would do: consume its sorter queue."""
    return lambda connection: consume(connection, topology, SORTER_QUEUE, InstanceReceived, handler)


def collector(topology: Topology, into: list[InstanceReceived]) -> Consumer:
    async def handler(event: InstanceReceived) -> None:
        into.append(event)

    return sorter_consumer(topology, handler)


async def dead_counts_are(
    connection: AbstractRobustConnection, topology: Topology, in_sorter: int
) -> bool:
    """The installation's dead-letter queues hold ``in_sorter`` in the sorter's, none else."""
    expected = dict.fromkeys(topology.dead_letter_names, 0)
    expected[topology.dead_letter_name(SORTER_QUEUE)] = in_sorter
    return await dead_letter_counts(connection, topology) == expected


@pytest.mark.integration
def test_two_installations_on_one_virtual_host_keep_their_events_apart(broker_url: str) -> None:
    for_alpha, for_beta = received(1), received(2)
    got: dict[str, list[InstanceReceived]] = {"alpha": [], "beta": []}

    async def scenario() -> list[str]:
        connection = await connect(broker_url, name="test")
        try:
            publishers = {t.installation: Publisher(connection, t) for t in (ALPHA, BETA)}
            for publisher in publishers.values():
                await publisher.start()
            async with (
                running(broker_url, collector(ALPHA, got["alpha"])),
                running(broker_url, collector(BETA, got["beta"])),
            ):
                await publishers["alpha"].publish(for_alpha)
                await publishers["beta"].publish(for_beta)
                await eventually(lambda: bool(got["alpha"] and got["beta"]))
                await asyncio.sleep(QUIET)
            return list(await list_queues(broker_url))
        finally:
            await connection.close()

    queues = run(scenario())
    assert got == {"alpha": [for_alpha], "beta": [for_beta]}
    expected = {t.queue_name(q) for t in (ALPHA, BETA) for q in ALL_QUEUES}
    expected |= set(ALPHA.dead_letter_names) | set(BETA.dead_letter_names)
    assert set(queues) == expected  # and none of the default installation's


@pytest.mark.integration
def test_dead_letters_stay_with_their_installation(broker_url: str, tmp_path: Path) -> None:
    async def refuse(event: InstanceReceived) -> None:
        raise PermanentError("never filed")

    async def dead_letter_one_in_alpha() -> None:
        connection = await connect(broker_url, name="test")
        try:
            alpha, beta = Publisher(connection, ALPHA), Publisher(connection, BETA)
            await alpha.start()
            await beta.start()
            async with running(broker_url, sorter_consumer(ALPHA, refuse)):
                await alpha.publish(received(3))
                await eventually(lambda: dead_counts_are(connection, ALPHA, 1))
            assert await dead_counts_are(connection, BETA, 0)
            assert await ready_count(connection, BETA.queue_name(SORTER_QUEUE)) == 0
        finally:
            await connection.close()

    async def sorter_depths() -> dict[str, int]:
        connection = await connect(broker_url, name="test")
        try:
            return {
                t.installation: await ready_count(connection, t.queue_name(SORTER_QUEUE))
                for t in (ALPHA, BETA)
            }
        finally:
            await connection.close()

    run(dead_letter_one_in_alpha())
    # `dcmdb dead-letters` of each installation sees its own only, and requeues into its own.
    beta = dead_letters_command(broker_url, "beta", tmp_path, "--requeue")
    assert "beta.sorter.dead: 0 message(s)" in beta.stdout and "alpha" not in beta.stdout
    alpha = dead_letters_command(broker_url, "alpha", tmp_path, "--requeue")
    assert "alpha.sorter.dead: 1 message(s) sent back" in alpha.stdout, alpha.stderr
    assert "beta" not in alpha.stdout
    assert run(sorter_depths()) == {"alpha": 1, "beta": 0}

"""Small helpers every kind of test uses: a free port, and waiting for a condition.

A test waits for what it expects, never for a fixed time: the condition is polled
until it holds or the time is up, and then the test fails saying what it waited for.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
SLOW_POLL = 0.5  # seconds between reads of a whole catalog or listing


# Ports for the tests' listeners lie below the kernel's ephemeral range (32768-60999 here):
# a port the kernel hands out would be free when probed and may be an outgoing connection's
# (to RabbitMQ, say) by the time a service binds it. Each pytest-xdist worker has a band of
# its own, so that no two workers hand out the same port.
PORT_BANDS = range(10_000, 32_000, 2_000)


def _ports() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = PORT_BANDS[int(worker) % len(PORT_BANDS) if worker.isdigit() else 0]
    # From a random place in the band: two test runs on one machine seldom meet.
    offset = random.randrange(PORT_BANDS.step)
    while True:
        for i in range(PORT_BANDS.step):
            yield start + (offset + i) % PORT_BANDS.step


_next_port = _ports()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, and no other test is given."""
    while True:
        port = next(_next_port)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@contextmanager
def refused_port() -> Iterator[int]:
    """A port where every connection is refused while the block runs: bound, never
    listening, so that no process of a test running beside this one can take it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``condition`` until it returns something true, and return that; fail the test
    after ``timeout`` seconds, naming ``what`` it waited for. Exceptions propagate: a
    condition that cannot be evaluated is a failure, not a reason to wait longer.
    A condition that reads a whole catalog waits ``SLOW_POLL`` between reads: the tests
    run side by side on two cores, and polling takes from the services it waits for."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if outcome:
            return outcome
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 15, what: str = "a condition"
) -> None:
    """``wait_for`` for asyncio tests; ``check`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def finished_job(fetch: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """A retrieval job, as ``fetch`` reads it from the API, once it has ended."""
    return wait_for(
        lambda: job if (job := fetch())["state"] not in ("queued", "running") else None,
        timeout,
        "the retrieval job to end",
        interval=0.2,
    )


def add_key(keys_file: Path, name: str, labs: list[str] | None, scope: str = "read") -> str:
    """Add a key to a keys file as `dcmdb keys add` does (labs None: every lab); the key."""
    from shared import keys

    key = keys.new_key()
    entry = keys.KeyEntry(
        name=name, scope=keys.Scope(scope), labs="all" if labs is None else tuple(labs),
        sha256=keys.digest(key),
    )  # fmt: skip
    with keys.editing(keys_file) as document:
        document.keys.append(entry)
    return key

"""Connecting to RabbitMQ: to one broker, or to the nodes of a cluster.

Several brokers: ``DCMDB_BROKER_URL`` may name the nodes of a RabbitMQ cluster, separated by
commas. `connect` tries them in turn, and its connection, when it loses its node, reconnects
to the next one (`ClusterConnection`); its channels then declare the topology again and its
consumers consume again (``shared.broker``), on whichever node it reached.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from shared.settings import broker_addresses

log = logging.getLogger(__name__)

# Seconds between a connection's attempts to reach a broker again after the first, which
# it makes at once (to the next node, when there are several).
RECONNECT_INTERVAL = 2.0


class ClusterConnection(RobustConnection):
    """aio-pika's robust connection, which reconnects to its one URL, made to move to the next
    of several whenever its connection is lost or an attempt fails. The options of the URL
    it started with (query parameters) stay in force."""

    def __init__(self, urls: Sequence[URL], first: int, **kwargs: Any) -> None:
        super().__init__(urls[first], **kwargs)
        self._urls = list(urls)
        self._current = first

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called when an established connection is lost and when an attempt fails; the
        # robust connection's next attempt reads self.url.
        if len(self._urls) > 1:
            self._current = (self._current + 1) % len(self._urls)
            self.url = self._urls[self._current]
        await super()._on_connection_close(closing)


async def connect(urls: str, *, name: str) -> AbstractRobustConnection:
    """Connect to the first broker of ``urls`` (``DCMDB_BROKER_URL``) that answers, trying
    each in turn with one clear line per failed attempt until one does."""
    addresses = [URL(url) for url in broker_addresses(urls)]
    delay = 1.0
    attempt = 0
    while True:
        first = attempt % len(addresses)
        connection = ClusterConnection(
            addresses,
            first,
            client_properties={"connection_name": name},
            reconnect_interval=RECONNECT_INTERVAL,
        )
        try:
            await connection.connect()
            return connection
        except asyncio.CancelledError:
            # aio-pika keeps trying in a task of its own until the connection is closed:
            # left open, a service stopped while it connects would never end.
            await connection.close()
            raise
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            await connection.close()
            attempt += 1
            last_of_round = attempt % len(addresses) == 0
            log.warning(
                "RabbitMQ at %s is not reachable (%s); %s",
                _redact(str(addresses[first])),
                exc.__class__.__name__,
                f"retrying in {delay:.0f} s" if last_of_round else "trying the next",
            )
            if last_of_round:
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

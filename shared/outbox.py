"""Events the catalog owes the bus: published at least once, marked only once confirmed.

A service that decides something in the catalog (a series complete, a study evicted)
commits the decision with a flag "not yet announced", and announces it afterwards: the
catalog is the outbox. `announce_next` takes one row, locked from the moment it is read
until it is marked, with the publish (which returns once the broker confirmed) in between:

- the catalog never says "announced" for an event the broker did not confirm: a publish
  that fails or times out rolls the transaction back, and the next round tries again;
- several processes announcing at once publish each event once: another one skips the
  locked row (PostgreSQL) or waits for the mark (SQLite's write lock). Only a process
  that dies between the broker's confirm and the commit publishes an event twice, after
  its restart; consumers know an event they already handled.

The catalog work runs in a thread (``asyncio.to_thread``) and the publisher on the event
loop: `publishing_from_thread` bridges the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

from sqlalchemy import Row, Select
from sqlalchemy.orm import Session, sessionmaker

from shared.messages import Event

if TYPE_CHECKING:  # a sorter's or retention's catalog work does not need the AMQP client
    from shared.broker import Publisher

EventT = TypeVar("EventT", bound=Event)
Columns = TypeVarTuple("Columns")

PUBLISH_TIMEOUT = 30.0  # seconds an event may wait for the broker's confirm

Publish = Callable[[EventT], None]


def announce_next(
    sessions: sessionmaker[Session],
    pending: Select[*Columns],
    locked: type,
    event_of: Callable[[Row[*Columns]], EventT],
    mark: Callable[[Row[*Columns]], None],
    publish: Publish[EventT],
) -> EventT | None:
    """Publish the event of the first row of ``pending`` and ``mark`` the row announced, with
    the ``locked`` table's row locked throughout; None when no row waits."""
    with sessions.begin() as session:
        row = session.execute(pending.limit(1).with_for_update(of=locked, skip_locked=True)).first()
        if row is None:
            return None
        event = event_of(row)
        publish(event)
        mark(row)
    return event


def publishing_from_thread(publisher: Publisher) -> Publish[Event]:
    """``publisher.publish`` for a thread of this event loop: returns once confirmed."""
    loop = asyncio.get_running_loop()

    def publish(event: Event) -> None:
        confirmed = asyncio.run_coroutine_threadsafe(publisher.publish(event), loop)
        try:
            confirmed.result(PUBLISH_TIMEOUT)
        finally:
            confirmed.cancel()  # no-op once done; a publish that hangs gives up the row

    return publish

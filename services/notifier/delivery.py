"""Sending the deliveries the catalog holds: signed, retried with backoff, once each and
in order per study.

A delivery is sent when it is due and no earlier delivery of the same webhook and study
(or retrieval job) is still pending: a later one waits until the earlier is delivered or
abandoned. A notifier claims a delivery for a lease (a conditional update, so several
notifiers never send one at once), posts it, and records the outcome: a 2xx answer
delivers it; anything else (another status, no answer within the timeout, no connection)
schedules it again after ``RETRY_MIN * 2**(attempts - 1)`` seconds, at most ``RETRY_MAX``,
until ``GIVE_UP_AFTER`` seconds after the event, when it is abandoned. A notifier that dies
between the receiver's 2xx and the record sends it again once its lease is over: the
``X-Dcmdb-Delivery`` header lets a receiver see a repeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import Select, exists, func, or_, select, update
from sqlalchemy.orm import aliased

from services.notifier.catalog import Catalog
from shared.catalog.states import DeliveryState
from shared.catalog.types import now
from shared.catalog.webhooks import Webhook, WebhookDelivery
from shared.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER
from shared.webhooks import signature as sign

log = logging.getLogger("dcmdb.notifier")

D = WebhookDelivery
_ERROR_LENGTH = 500


@dataclass(frozen=True)
class Backoff:
    minimum: float
    maximum: float
    give_up_after: float

    def delay(self, attempts: int) -> float:
        """Seconds before the next attempt, after ``attempts`` failed ones."""
        return float(min(self.minimum * 2 ** min(attempts - 1, 60), self.maximum))


@dataclass(frozen=True)
class Claimed:
    """A delivery this notifier holds, with what sending it takes."""

    id: int
    delivery_id: str
    webhook_id: int
    event: str
    url: str
    secret: str
    body: bytes
    attempts: int  # this one included
    created_at: datetime


@dataclass(frozen=True)
class Answer:
    delivered: bool
    status: int | None
    error: str


def _due(moment: datetime) -> Select[int]:
    earlier = aliased(WebhookDelivery)
    blocked = exists().where(
        earlier.webhook_id == D.webhook_id,
        earlier.ordering_key == D.ordering_key,
        earlier.state == DeliveryState.PENDING,
        earlier.id < D.id,
    )
    return (
        select(D.id)
        .where(
            D.state == DeliveryState.PENDING,
            D.next_attempt_at <= moment,
            or_(D.claimed_until.is_(None), D.claimed_until < moment),
            ~blocked,
        )
        .order_by(D.next_attempt_at, D.id)
        .limit(8)
    )


def claim(catalog: Catalog, lease: float) -> Claimed | None:
    """Take the next due delivery for ``lease`` seconds; None when none is due."""
    moment = now()
    with catalog.reader() as session:
        candidates = session.scalars(_due(moment)).all()
    for row_id in candidates:
        with catalog.writer.begin() as session:
            taken = session.execute(
                update(D)
                .where(
                    D.id == row_id,
                    D.state == DeliveryState.PENDING,
                    or_(D.claimed_until.is_(None), D.claimed_until < moment),
                )
                .values(claimed_until=moment + timedelta(seconds=lease), attempts=D.attempts + 1)
                .execution_options(synchronize_session=False)
            )
            if getattr(taken, "rowcount", 0) != 1:
                continue  # another notifier took it
            delivery, hook = session.execute(
                select(D, Webhook).join(Webhook, Webhook.id == D.webhook_id).where(D.id == row_id)
            ).one()
            return Claimed(
                delivery.id,
                delivery.delivery_id,
                hook.id,
                str(delivery.event),
                hook.url,
                hook.secret,
                delivery.body.encode(),
                delivery.attempts,
                delivery.created_at,
            )
    return None


def release(catalog: Catalog, claimed: Claimed) -> None:
    """Give back a delivery claimed but not sent (a notifier stopping)."""
    with catalog.writer.begin() as session:
        session.execute(
            update(D)
            .where(D.id == claimed.id, D.state == DeliveryState.PENDING)
            .values(claimed_until=None, attempts=D.attempts - 1)
            .execution_options(synchronize_session=False)
        )


async def post(client: httpx.AsyncClient, claimed: Claimed, timeout: float) -> Answer:
    """One attempt, answered within ``timeout`` seconds in all (a receiver that trickles
    its answer too); never raises for what the receiver or the network did. The answer's
    body is not read."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "dcmdb-webhooks/1",
        EVENT_HEADER: claimed.event,
        DELIVERY_HEADER: claimed.delivery_id,
        TIMESTAMP_HEADER: str(int(time.time())),
        SIGNATURE_HEADER: sign(claimed.secret, claimed.body),
    }
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream("POST", claimed.url, content=claimed.body, headers=headers) as answer,
        ):
            status = answer.status_code
    except (httpx.HTTPError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Answer(False, None, error[:_ERROR_LENGTH])
    if 200 <= status < 300:
        return Answer(True, status, "")
    return Answer(False, status, f"HTTP {status}")


def record(catalog: Catalog, claimed: Claimed, answer: Answer, backoff: Backoff) -> DeliveryState:
    """Write how the attempt went; the delivery's state after it."""
    moment = now()
    values: dict[str, object] = {
        "claimed_until": None,
        "last_status": answer.status,
        "last_error": answer.error,
    }
    if answer.delivered:
        state = DeliveryState.DELIVERED
        values |= {"state": state, "delivered_at": moment}
    elif moment - claimed.created_at >= timedelta(seconds=backoff.give_up_after):
        state = DeliveryState.ABANDONED
        values |= {"state": state}
    else:
        state = DeliveryState.PENDING
        pause = backoff.delay(claimed.attempts)
        values |= {"next_attempt_at": moment + timedelta(seconds=pause)}
    with catalog.writer.begin() as session:
        session.execute(
            update(D)
            .where(D.id == claimed.id, D.state == DeliveryState.PENDING)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    _say(claimed, answer, state, values.get("next_attempt_at"), moment)
    return state


def _say(
    claimed: Claimed, answer: Answer, state: DeliveryState, then: object, moment: datetime
) -> None:
    what = f"{claimed.event} delivery {claimed.delivery_id} to webhook {claimed.webhook_id}"
    if state == DeliveryState.DELIVERED:
        log.info("%s delivered (attempt %d)", what, claimed.attempts)
    elif state == DeliveryState.ABANDONED:
        log.error("%s abandoned after %d attempts: %s", what, claimed.attempts, answer.error)
    else:
        assert isinstance(then, datetime)
        log.warning(
            "%s failed (attempt %d: %s); next attempt in %.3g s",
            what,
            claimed.attempts,
            answer.error,
            (then - moment).total_seconds(),
        )


def pending_count(catalog: Catalog) -> int:
    with catalog.reader() as session:
        found = session.scalar(
            select(func.count()).select_from(D).where(D.state == DeliveryState.PENDING)
        )
    return int(found or 0)

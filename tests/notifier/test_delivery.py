"""Sending webhook deliveries to a real HTTP receiver on this host: signed, retried with
backoff while the receiver is down or failing, once each and in order per study, on
SQLite and PostgreSQL, by one notifier or two at once."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.notifier.catalog import Catalog
from services.notifier.delivery import Backoff
from services.notifier.main import Notifier
from services.notifier.recognition import Recognised, enqueue
from services.notifier.settings import NotifierSettings
from shared import webhooks
from shared.catalog.states import DeliveryState, WebhookEvent
from shared.catalog.webhooks import Webhook, WebhookDelivery
from tests.notifier.peers import Received, WebhookReceiver
from tests.support import eventually

pytestmark = pytest.mark.integration

LAB = "SMITH_JOHN"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url)
    yield opened
    opened.dispose()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    peer = WebhookReceiver()
    yield peer
    peer.stop()


def settings(tmp_path: Path, url: str, **values: Any) -> NotifierSettings:
    fast = {
        "webhook_retry_min": 0.2,
        "webhook_retry_max": 0.8,
        "webhook_poll_interval": 0.1,
        "webhook_timeout": 30.0,  # a loaded machine answers late; timeouts are tested on their own
    }
    return NotifierSettings(data_dir=tmp_path, database_url=url, **(fast | values))  # type: ignore[arg-type]


def register(catalog: Catalog, url: str) -> Webhook:
    with catalog.writer.begin() as session:
        return webhooks.register(
            session,
            lab=LAB,
            url=url,
            events=[WebhookEvent.STUDY_READY],
            include_patient=False,
            created_by="test",
        )


def events(catalog: Catalog, hook: Webhook, studies: int, per_study: int) -> list[str]:
    """``per_study`` events of each study, the studies' interleaved; their keys in order."""
    keys = []
    for number in range(1, per_study + 1):
        for study in range(1, studies + 1):
            key = f"study-{study}:{number}"
            recognised = Recognised(
                WebhookEvent.STUDY_READY, key, f"study/{study}", datetime.now(UTC), f"1.2.{study}"
            )
            with catalog.writer.begin() as session:
                made = enqueue(
                    session, [hook], recognised, lambda _, s=study, n=number: {"s": s, "n": n}
                )
            assert made == 1
            keys.append(key)
    return keys


def rows(catalog: Catalog, hook: Webhook | None = None) -> list[WebhookDelivery]:
    query = select(WebhookDelivery).order_by(WebhookDelivery.id)
    if hook is not None:
        query = query.where(WebhookDelivery.webhook_id == hook.id)
    with catalog.reader() as session:
        return list(session.scalars(query))


def all_delivered(catalog: Catalog) -> bool:
    return all(row.state == DeliveryState.DELIVERED for row in rows(catalog))


async def delivering(
    notifiers: list[Notifier], until: Callable[[], bool], what: str, timeout: float = 30
) -> None:
    """Run the notifiers' delivery loops until ``until`` holds, then stop them as a stop
    signal does."""
    loops = [asyncio.create_task(notifier.deliver()) for notifier in notifiers]
    try:
        await eventually(until, timeout, what)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)


def order_per_study(received: list[Received]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for request in received:
        found.setdefault(request.json["s"], []).append(request.json["n"])
    return found


def test_a_delivery_is_signed_and_says_what_it_is(
    catalog: Catalog, receiver: WebhookReceiver, tmp_path: Path, catalog_url: str
) -> None:
    receiver.start()
    hook = register(catalog, receiver.url)
    events(catalog, hook, studies=1, per_study=1)
    notifier = Notifier(settings(tmp_path, catalog_url), catalog)
    asyncio.run(delivering([notifier], lambda: all_delivered(catalog), "the delivery"))
    [request] = receiver.delivered()
    [row] = rows(catalog)
    expected = hmac.new(hook.secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Dcmdb-Signature"] == f"sha256={expected}"
    assert webhooks.verify(hook.secret, request.body, request.headers["X-Dcmdb-Signature"])
    assert not webhooks.verify(webhooks.new_secret(), request.body, f"sha256={expected}")
    assert request.headers["X-Dcmdb-Event"] == "study.ready"
    assert request.headers["X-Dcmdb-Delivery"] == row.delivery_id == request.json["delivery"]
    assert abs(int(request.headers["X-Dcmdb-Timestamp"]) - time.time()) < 60
    assert request.headers["Content-Type"] == "application/json"
    assert request.path == "/hooks/dcmdb"
    assert request.body.decode() == row.body
    assert (row.state, row.attempts, row.last_status, row.last_error) == ("delivered", 1, 200, "")
    assert row.delivered_at is not None and row.claimed_until is None


def test_a_receiver_down_then_back_gets_every_event_once_and_in_order_per_study(
    catalog: Catalog, receiver: WebhookReceiver, tmp_path: Path, catalog_url: str
) -> None:
    """A second webhook, up all along, is not held back by the first one's receiver."""
    down = register(catalog, receiver.url)
    up_peer = WebhookReceiver().start()
    try:
        up = register(catalog, up_peer.url)
        keys = events(catalog, down, studies=3, per_study=3)
        events(catalog, up, studies=3, per_study=3)
        notifier = Notifier(settings(tmp_path, catalog_url), catalog)

        def heads_retried_and_others_delivered() -> bool:
            heads = {row.ordering_key: row for row in reversed(rows(catalog, down))}
            retried = all(row.attempts >= 2 for row in heads.values())
            return retried and len(up_peer.delivered()) == 9

        asyncio.run(
            delivering(
                [notifier],
                heads_retried_and_others_delivered,
                "retries while the receiver is down, and the other webhook's deliveries",
            )
        )
        waiting = rows(catalog, down)
        heads = {row.ordering_key: row.id for row in reversed(waiting)}
        for row in waiting:
            assert row.state == DeliveryState.PENDING
            if row.id in heads.values():
                assert row.last_status is None and "ConnectError" in row.last_error
                assert row.next_attempt_at > row.created_at
            else:
                assert row.attempts == 0, "a later delivery of a study waits for the earlier"
        assert len(up_peer.delivered()) == 9
        assert all(row.state == DeliveryState.DELIVERED for row in rows(catalog, up))

        # Back, but answering 503 to each delivery's first attempt.
        tried: set[str] = set()

        def flaky(request: Received) -> tuple[int, float]:
            first = request.delivery not in tried
            tried.add(request.delivery)
            return (503 if first else 200), 0.0

        receiver.behaviour = flaky
        receiver.start()
        restarted = Notifier(settings(tmp_path, catalog_url), catalog)
        asyncio.run(delivering([restarted], lambda: all_delivered(catalog), "every delivery"))
    finally:
        up_peer.stop()
    delivered = receiver.delivered()
    assert sorted(r.delivery for r in delivered) == sorted(r.delivery_id for r in waiting)
    assert len(delivered) == len(keys) == 9
    assert order_per_study(delivered) == {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]}
    assert order_per_study(up_peer.delivered()) == {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]}
    for row in rows(catalog, down):
        assert row.attempts >= 2 and row.last_status == 200 and row.last_error == ""


def test_two_notifiers_send_each_delivery_once_in_order(
    catalog: Catalog, receiver: WebhookReceiver, tmp_path: Path, catalog_url: str
) -> None:
    receiver.behaviour = lambda _: (200, 0.02)
    receiver.start()
    hook = register(catalog, receiver.url)
    events(catalog, hook, studies=4, per_study=6)
    other = Catalog.open(catalog_url)
    try:
        notifiers = [
            Notifier(settings(tmp_path, catalog_url, webhook_workers=3), each)
            for each in (catalog, other)
        ]
        asyncio.run(delivering(notifiers, lambda: all_delivered(catalog), "every delivery", 60))
    finally:
        other.dispose()
    delivered = receiver.delivered()
    assert len(receiver.requests) == len(delivered) == 24, "no delivery sent twice"
    assert len({r.delivery for r in delivered}) == 24
    assert order_per_study(delivered) == {s: [1, 2, 3, 4, 5, 6] for s in (1, 2, 3, 4)}


def test_a_delivery_is_abandoned_after_the_give_up_age_and_the_next_goes_on(
    catalog: Catalog, receiver: WebhookReceiver, tmp_path: Path, catalog_url: str
) -> None:
    receiver.behaviour = lambda request: ((500 if request.json["n"] == 1 else 200), 0.0)
    receiver.start()
    hook = register(catalog, receiver.url)
    events(catalog, hook, studies=1, per_study=2)
    notifier = Notifier(settings(tmp_path, catalog_url, webhook_give_up_after=1.5), catalog)

    def settled() -> bool:
        return all(row.state != DeliveryState.PENDING for row in rows(catalog))

    asyncio.run(delivering([notifier], settled, "the first abandoned, the second delivered"))
    first, second = rows(catalog)
    assert (first.state, first.last_status, first.last_error) == ("abandoned", 500, "HTTP 500")
    assert first.attempts >= 2 and first.delivered_at is None
    assert second.state == "delivered" and second.attempts == 1
    assert [r.json["n"] for r in receiver.requests][-1] == 2, "the second waited"


def test_a_receiver_that_does_not_answer_in_time_is_tried_again(
    catalog: Catalog,
    receiver: WebhookReceiver,
    tmp_path: Path,
    catalog_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow_once: set[str] = set()

    def slow_first(request: Received) -> tuple[int, float]:
        first = request.delivery not in slow_once
        slow_once.add(request.delivery)
        return 200, (120.0 if first else 0.0)  # far past the 30 s the delivery is given

    receiver.behaviour = slow_first
    receiver.start()
    hook = register(catalog, receiver.url)
    events(catalog, hook, studies=1, per_study=1)
    notifier = Notifier(settings(tmp_path, catalog_url, webhook_timeout=0.5), catalog)
    asyncio.run(delivering([notifier], lambda: all_delivered(catalog), "the delivery"))
    [row] = rows(catalog)
    assert (row.attempts, row.last_status, row.last_error) == (2, 200, "")
    first, second = receiver.requests
    assert receiver.answered == [(second, 200)], "the slow answer was not waited for"
    assert first.delivery == second.delivery == row.delivery_id and first.body == second.body
    [failure] = [r.getMessage() for r in caplog.records if "failed (attempt 1" in r.getMessage()]
    assert "Timeout" in failure, failure


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(minimum=10, maximum=3600, give_up_after=86400)
    assert [backoff.delay(n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff.delay(9) == 2560 and backoff.delay(10) == 3600
    assert backoff.delay(10_000) == 3600


def test_the_body_is_the_json_the_catalog_holds(catalog: Catalog) -> None:
    hook = register(catalog, "http://127.0.0.1:9/")
    events(catalog, hook, studies=1, per_study=1)
    [row] = rows(catalog)
    body = json.loads(row.body)
    assert (body["event"], body["lab"], body["delivery"]) == ("study.ready", LAB, row.delivery_id)

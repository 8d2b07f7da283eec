"""Lab webhooks: registering them in the catalog, and how each delivery is signed.

A receiver checks a delivery with the webhook's secret (shown once, when it is
registered): ``X-Dcmdb-Signature`` is ``sha256=`` and the hex HMAC-SHA256 of the raw body
under the secret, as `verify` computes it. ``X-Dcmdb-Delivery`` is the same for every
attempt of one delivery (a receiver that saw it already may answer 2xx and ignore it);
``X-Dcmdb-Timestamp`` is when this attempt was sent (Unix seconds).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.catalog.states import DeliveryState, WebhookEvent
from shared.catalog.webhooks import Webhook, WebhookDelivery

SIGNATURE_HEADER = "X-Dcmdb-Signature"
EVENT_HEADER = "X-Dcmdb-Event"
DELIVERY_HEADER = "X-Dcmdb-Delivery"
TIMESTAMP_HEADER = "X-Dcmdb-Timestamp"
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes) -> str:
    """The ``X-Dcmdb-Signature`` value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret`` (constant time)."""
    return hmac.compare_digest(signature(secret, body), header)


def register(
    session: Session,
    *,
    lab: str,
    url: str,
    events: Iterable[WebhookEvent],
    include_patient: bool,
    created_by: str,
) -> Webhook:
    """A new webhook with a new secret, flushed (it has its id)."""
    webhook = Webhook(
        lab=lab,
        url=url,
        events=",".join(sorted(set(events))),
        include_patient=include_patient,
        secret=new_secret(),
        created_at=datetime.now(UTC),
        created_by=created_by,
    )
    session.add(webhook)
    session.flush()
    return webhook


def registered(session: Session) -> Sequence[Webhook]:
    return session.scalars(select(Webhook).order_by(Webhook.id)).all()


def remove(session: Session, webhook_id: int) -> bool:
    """Remove a webhook and its delivery log (what was still pending is not sent); False when
    there is none."""
    webhook = session.get(Webhook, webhook_id)
    if webhook is None:
        return False
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
    session.delete(webhook)
    return True


def delivery_log(
    session: Session, webhook_id: int, state: DeliveryState | None, limit: int
) -> Sequence[WebhookDelivery]:
    """A webhook's deliveries, the newest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    return session.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit)).all()

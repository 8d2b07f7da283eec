"""The catalog's tables of lab webhooks: the registrations and the delivery outbox.

A delivery row is written when the notifier recognises an event (in the transaction that
reads the catalog's verdict), with its body already made: retries send the same bytes,
under the same signature. ``(webhook_id, event_key)`` is unique, so an event recognised
twice (a message redelivered by the broker, two notifiers) is delivered once. Rows of one
``(webhook_id, ordering_key)`` (a study, or a retrieval job) go out in ``id`` order.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shared.catalog.models import Base
from shared.catalog.states import DeliveryState, WebhookEvent
from shared.catalog.types import StateColumn, UtcDateTime


class Webhook(Base):
    """A URL a lab's events are posted to, signed with its secret."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lab: Mapped[str] = mapped_column(String, index=True)  # a physician folder
    url: Mapped[str] = mapped_column(String)
    events: Mapped[str] = mapped_column(String)  # comma-separated `WebhookEvent` values
    include_patient: Mapped[bool] = mapped_column(Boolean)
    # The HMAC key of the signatures. Kept as it is, since signing needs it; shown once.
    secret: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String, default="")  # the API key's name

    @property
    def event_set(self) -> frozenset[WebhookEvent]:
        return frozenset(WebhookEvent(name) for name in self.events.split(",") if name)


class WebhookDelivery(Base):
    """One event for one webhook, from its recognition to its delivery (or abandonment)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_key", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_order", "webhook_id", "ordering_key", "state", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String, unique=True)  # X-Dcmdb-Delivery, a UUID
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[WebhookEvent] = mapped_column(StateColumn(WebhookEvent))
    # What makes the event itself: "study.ready:<study>:<series generations digest>", ...
    event_key: Mapped[str] = mapped_column(String)
    ordering_key: Mapped[str] = mapped_column(String)  # "study/<uid>" or "retrieval/<id>"
    study_uid: Mapped[str | None] = mapped_column(String)
    series_uid: Mapped[str | None] = mapped_column(String)
    retrieval_id: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(String)  # the JSON sent, exactly
    state: Mapped[DeliveryState] = mapped_column(StateColumn(DeliveryState))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # A notifier sending it holds it until then; one that died lets it go again.
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)  # the HTTP status last answered
    last_error: Mapped[str] = mapped_column(String, default="")
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class NotifiedRetrieval(Base):
    """A finished retrieval job the notifier has recognised (once, whatever webhooks exist):
    the jobs without a row here are those still to look at."""

    __tablename__ = "notified_retrievals"

    job_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    recognised_at: Mapped[datetime] = mapped_column(UtcDateTime)

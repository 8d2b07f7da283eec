"""The notifier's Prometheus metrics: delivery attempts by outcome, and what is pending."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge

from services.notifier import delivery
from services.notifier.catalog import Catalog
from shared.catalog.states import DeliveryState, WebhookEvent

log = logging.getLogger(__name__)

ATTEMPTS = Counter(
    "dcmdb_webhook_attempts_total",
    "Webhook delivery attempts, by event and the delivery's state after it",
    ["event", "state"],
)
PENDING = Gauge(
    "dcmdb_webhook_deliveries_pending",
    "Webhook deliveries neither delivered nor abandoned yet (every notifier reports them all)",
)


def count_from_zero() -> None:
    for event in WebhookEvent:
        for state in DeliveryState:
            ATTEMPTS.labels(event, state)


def counted(event: str, state: DeliveryState) -> None:
    ATTEMPTS.labels(event, state).inc()


def sample_pending(catalog: Catalog) -> None:
    """Before a scrape: the pending deliveries the catalog holds."""
    try:
        PENDING.set(delivery.pending_count(catalog))
    except Exception as exc:  # the catalog is away: the gauge keeps its last value
        log.debug("counting pending deliveries failed: %s", exc)

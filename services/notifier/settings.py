"""Notifier settings: how lab webhooks are delivered and retried."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from shared.settings import CommonSettings, metrics_port


class NotifierSettings(CommonSettings):
    # A failed delivery is tried again after RETRY_MIN seconds, then twice as long each
    # time, at most RETRY_MAX apart; GIVE_UP_AFTER seconds after the event it is abandoned
    # (the log keeps it) and the next delivery of the same study goes on.
    webhook_retry_min: float = Field(default=10.0, gt=0)
    webhook_retry_max: float = Field(default=3600.0, gt=0)
    webhook_give_up_after: float = Field(default=86400.0, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0)  # seconds a receiver may take to answer
    webhook_workers: int = Field(default=4, ge=1, le=64)  # deliveries in flight at once
    # Seconds between looks for due deliveries and for finished retrieval jobs.
    webhook_poll_interval: float = Field(default=2.0, gt=0)
    # A finished retrieval is announced once the studies it moved are filed, or this many
    # seconds after it ended, whichever comes first.
    webhook_retrieval_wait: float = Field(default=120.0, ge=0)
    # Put before the API links of a delivery (/studies/<uid>): the API's address as the
    # labs reach it, e.g. https://dcmdb.example.org; empty: the links are paths.
    webhook_link_base: str = ""
    # Webhooks registered for this lab name are the admins': they hear of every lab's
    # studies the PACS lacks (reconciliation.missing).
    admin_webhook_lab: str = Field(default="dcmdb-admins", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    metrics_port: int = metrics_port("notifier")

    @model_validator(mode="after")
    def _retries_grow(self) -> Self:
        if self.webhook_retry_max < self.webhook_retry_min:
            raise ValueError(
                f"DCMDB_WEBHOOK_RETRY_MAX ({self.webhook_retry_max:g}) must be at least "
                f"DCMDB_WEBHOOK_RETRY_MIN ({self.webhook_retry_min:g})"
            )
        if self.webhook_link_base and not self.webhook_link_base.startswith(
            ("http://", "https://")
        ):
            raise ValueError("DCMDB_WEBHOOK_LINK_BASE must start with http:// or https://")
        return self

    @property
    def lease(self) -> float:
        """Seconds a notifier holds a delivery it sends: well past the receiver's timeout."""
        return self.webhook_timeout * 2 + 30

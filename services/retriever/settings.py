"""Retriever settings: the PACS peers, the nightly retrieval and reconciliation."""

from __future__ import annotations

from typing import Self

from croniter import croniter
from pydantic import Field, model_validator

from shared.reconciliation import ReconcileSettings
from shared.settings import metrics_port


class RetrieverSettings(ReconcileSettings):
    # Where dcmdb's receiver listens, for what a PACS sends by C-GET (port: DCMDB_DICOM_PORT).
    receiver_host: str = "127.0.0.1"
    # Cron expression of the nightly retrieval of the previous day's studies; "" disables.
    nightly_retrieve: str = "0 1 * * *"
    nightly_modality: str = ""  # only studies with this modality
    nightly_physician: str = ""  # only studies of this referring physician (wildcards allowed)
    # A slot missed while dcmdb was down still runs when it is back within this many hours.
    nightly_grace_hours: float = Field(default=12.0, ge=0)
    # A running job whose worker has not touched it for this long is taken over.
    job_lease: float = Field(default=60.0, gt=0)
    poll_interval: float = Field(default=2.0, gt=0)
    # A PACS that fails to associate is asked again after 1, 2, 4 ... times this delay.
    pacs_attempts: int = Field(default=4, ge=1, le=20)
    pacs_retry_delay: float = Field(default=2.0, ge=0)
    # How long a job's end (and the end-of-night check) waits for moved instances to be filed.
    check_wait: float = Field(default=300.0, ge=0)
    # Moves at once, each on its own association to the PACS (one per study).
    retrieve_parallel: int = Field(default=2, ge=1, le=16)
    metrics_port: int = metrics_port("retriever")

    @model_validator(mode="after")
    def _valid_cron(self) -> Self:
        if self.nightly_retrieve.strip() and not croniter.is_valid(self.nightly_retrieve):
            raise ValueError(
                f"DCMDB_NIGHTLY_RETRIEVE={self.nightly_retrieve!r} is not a cron expression "
                "(minute hour day month weekday, e.g. '0 1 * * *')"
            )
        if self.nightly_reconcile.strip() and not croniter.is_valid(self.nightly_reconcile):
            raise ValueError(
                f"DCMDB_NIGHTLY_RECONCILE={self.nightly_reconcile!r} is not a cron expression "
                "(minute hour day month weekday, e.g. '0 3 * * *')"
            )
        return self

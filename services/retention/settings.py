"""Retention settings: the free-space marks and maximum age (`StorageSettings`), how often."""

from __future__ import annotations

from pydantic import Field

from shared.settings import StorageSettings, metrics_port


class RetentionSettings(StorageSettings):
    retention_interval: float = Field(default=60.0, gt=0)  # seconds between rounds
    metrics_port: int = metrics_port("retention")

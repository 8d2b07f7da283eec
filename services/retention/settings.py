"""Retention settings: the free-space marks and maximum age (`StorageSettings`), how often."""

from __future__ import annotations

from pydantic import Field

from shared.settings import StorageSettings


class RetentionSettings(StorageSettings):
    retention_interval: float = Field(default=60.0, gt=0)  # seconds between rounds
    metrics_port: int = Field(default=9105, ge=0, le=65535)  # 0: no metrics port

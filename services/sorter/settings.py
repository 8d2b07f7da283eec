"""Sorter settings."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings, metrics_port


class SorterSettings(CommonSettings):
    prefetch: int = Field(default=128, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=1000)
    metrics_port: int = metrics_port("sorter")

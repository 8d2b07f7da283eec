"""Converter settings."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from shared.settings import CommonSettings, metrics_port


def _default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class ConverterSettings(CommonSettings):
    workers: int = Field(default_factory=_default_workers, ge=1, le=64)  # series at once
    conversion_timeout: float = Field(default=600.0, gt=0)  # seconds for one series
    metrics_port: int = metrics_port("converter")
    # Acquisition times in the BIDS datasets (shared/bids): each subject's dates moved back by
    # a number of days of its own (intervals stay true), left out, or kept as acquired.
    bids_dates: Literal["shift", "remove", "keep"] = "shift"

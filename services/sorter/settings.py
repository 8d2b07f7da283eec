"""Sorter settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from shared.settings import CommonSettings, metrics_port


class SorterSettings(CommonSettings):
    physician_aliases: Path | None = None
    prefetch: int = Field(default=128, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=1000)
    metrics_port: int = metrics_port("sorter")

    @field_validator("physician_aliases")
    @classmethod
    def _aliases_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value

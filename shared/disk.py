"""Free space: what a filesystem holds, and the thresholds settings give as ``10%`` or ``50GB``.

A threshold is an amount of free space, either a share of the filesystem or a size, so
that the same setting means the same thing on a small test disk and on a large array.
Free space is what an unprivileged process may still write (``f_bavail``): the blocks a
filesystem reserves for root are no room for dcmdb.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


@dataclass(frozen=True)
class Threshold:
    """An amount of free space: ``percent`` of the filesystem, or ``size`` bytes."""

    text: str  # as configured, for messages and GET /storage
    percent: float | None = None
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """``10%``, ``50GB``, ``500MiB``, ``1.5TB`` or a number of bytes; ValueError otherwise."""
        cleaned = text.strip().lower()
        if cleaned.endswith("%"):
            try:
                percent = float(cleaned[:-1])
            except ValueError:
                raise ValueError(f"{text!r} is not a percentage such as 10%") from None
            if not 0 <= percent < 100:
                raise ValueError(f"{text!r}: a percentage of free space is from 0% to under 100%")
            return cls(text.strip(), percent=percent)
        match = _SIZE.fullmatch(cleaned)
        if match is None or match.group(2) not in _UNITS:
            raise ValueError(
                f"{text!r} is neither a percentage nor a size: write e.g. 10%, 50GB or 500MiB"
            )
        return cls(text.strip(), size=int(float(match.group(1)) * _UNITS[match.group(2)]))

    def bytes_of(self, total: int) -> int:
        """The threshold in bytes on a filesystem of ``total`` bytes."""
        if self.percent is not None:
            return int(total * self.percent / 100)
        assert self.size is not None
        return self.size

    def comparable(self, other: Threshold) -> bool:
        """Whether the two can be compared without knowing the filesystem's size."""
        return (self.percent is None) == (other.percent is None)

    @property
    def amount(self) -> float:
        """The percentage or the size, whichever it is (compare only `comparable` ones)."""
        return self.percent if self.percent is not None else float(self.size or 0)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class DiskUsage:
    """One filesystem's size and free space, in bytes."""

    total: int
    free: int

    @property
    def used(self) -> int:
        return self.total - self.free

    def below(self, threshold: Threshold) -> bool:
        return self.free < threshold.bytes_of(self.total)


def disk_usage(path: Path) -> DiskUsage:
    """The filesystem ``path`` is on (its nearest existing ancestor, before it is made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    stats = os.statvfs(path)
    return DiskUsage(total=stats.f_blocks * stats.f_frsize, free=stats.f_bavail * stats.f_frsize)

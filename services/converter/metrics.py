"""The converter's Prometheus metrics: conversions by outcome and engine, and their time."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.converter.conversion import Conversion

NO_ENGINE = "none"

CONVERSIONS = Counter(
    "dcmdb_conversions_total",
    "Series conversions, by outcome (converted, skipped, failed) and engine (dicom2nifti, "
    "dcm2niix, both joined by + when a series made several outputs, none when skipped or failed)",
    ["outcome", "engine"],
)
CONVERSION_SECONDS = Histogram(
    "dcmdb_conversion_seconds",
    "Time to convert one series, in its own process, by outcome",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)


def count(result: Conversion, seconds: float) -> None:
    # "dcm2niix v1.0.20260724" -> "dcm2niix": the version would make a new series per upgrade.
    engines = sorted({output.engine.split()[0] for output in result.outputs})
    CONVERSIONS.labels(result.status, "+".join(engines) or NO_ENGINE).inc()
    CONVERSION_SECONDS.labels(result.status).observe(seconds)

"""What retention evicts, decided from free-space figures alone; thresholds and their settings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.disk import DiskUsage, Threshold, disk_usage
from shared.errors import ConfigurationError
from shared.retention import Candidate, Policy, plan
from shared.settings import StorageSettings, load_settings
from tests.system import small_filesystem

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
MB = 1_000_000


def studies(*sizes: int, days_old: int = 10) -> list[Candidate]:
    """Candidates a day apart, the first the oldest."""
    return [
        Candidate(
            pk=n,
            study_uid=f"1.2.3.{n}",
            physician_folder="LAB",
            folder=f"study{n}",
            study_date="20261101",
            received_at=NOW - timedelta(days=days_old - n),
            size_bytes=size,
        )
        for n, size in enumerate(sizes)
    ]


def evicted(*args: object, **kwargs: object) -> list[tuple[int, str]]:
    result = plan(*args, **kwargs)  # type: ignore[arg-type]
    return [(p.candidate.pk, p.reason) for p in result.evictions]


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("10%", 1000 * MB, 100 * MB),
        ("0.5%", 1000 * MB, 5 * MB),
        ("50GB", 1, 50_000_000_000),
        ("500MiB", 1, 500 * 1024**2),
        ("1.5TB", 1, 1_500_000_000_000),
        (" 2 gib ", 1, 2 * 1024**3),
        ("4096", 1, 4096),
        ("0", 1, 0),
    ],
)
def test_thresholds_are_a_share_or_a_size(text: str, total: int, expected: int) -> None:
    assert Threshold.parse(text).bytes_of(total) == expected


@pytest.mark.parametrize("text", ["", "ten%", "100%", "-5%", "50 parsecs", "GB", "5GB free"])
def test_a_threshold_that_is_neither_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="percentage|size"):
        Threshold.parse(text)


def test_settings_parse_the_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DCMDB_RETENTION_LOW_FREE", "10%")
    monkeypatch.setenv("DCMDB_RETENTION_TARGET_FREE", "50GB")  # comparable on a disk only
    monkeypatch.setenv("DCMDB_RETENTION_MAX_AGE_DAYS", "365")
    monkeypatch.setenv("DCMDB_MIN_FREE", "500MiB")
    settings = load_settings(StorageSettings)
    assert settings.retention_low_free == Threshold.parse("10%")
    assert settings.retention_target_free == Threshold.parse("50GB")
    assert settings.retention_max_age_days == 365
    assert settings.min_free.bytes_of(0) == 500 * 1024**2
    assert Policy.of(settings).enabled
    monkeypatch.setenv("DCMDB_RETENTION_LOW_FREE", "")
    monkeypatch.setenv("DCMDB_RETENTION_TARGET_FREE", "")
    monkeypatch.setenv("DCMDB_RETENTION_MAX_AGE_DAYS", "")  # as .env.example leaves it
    assert not Policy.of(load_settings(StorageSettings)).enabled


@pytest.mark.parametrize(
    ("low", "target", "message"),
    [
        ("10%", "5%", "DCMDB_RETENTION_TARGET_FREE (5%) must be at least"),
        ("50GB", "10GB", "must be at least DCMDB_RETENTION_LOW_FREE (50GB)"),
        ("", "10GB", "DCMDB_RETENTION_LOW_FREE is not"),
        ("10 percent", "", "DCMDB_RETENTION_LOW_FREE: "),
    ],
)
def test_bad_thresholds_stop_the_service_in_one_line(
    monkeypatch: pytest.MonkeyPatch, low: str, target: str, message: str
) -> None:
    monkeypatch.setenv("DCMDB_RETENTION_LOW_FREE", low)
    monkeypatch.setenv("DCMDB_RETENTION_TARGET_FREE", target)
    with pytest.raises(ConfigurationError, match="DCMDB_RETENTION") as failure:
        load_settings(StorageSettings)
    assert message in str(failure.value) and "\n" not in str(failure.value)


def test_nothing_goes_while_free_space_is_above_the_low_mark() -> None:
    policy = Policy(Threshold.parse("10%"), Threshold.parse("20%"))
    assert evicted(DiskUsage(1000 * MB, 100 * MB), policy, studies(50 * MB, 50 * MB), NOW) == []


def test_below_the_low_mark_the_oldest_go_until_the_target() -> None:
    policy = Policy(Threshold.parse("10%"), Threshold.parse("20%"))
    # 99 MB free of 1000: 101 MB must go to reach the 200 MB target.
    candidates = studies(60 * MB, 40 * MB, 2 * MB, 5)
    result = plan(DiskUsage(1000 * MB, 99 * MB), policy, candidates, NOW)
    assert [(p.candidate.pk, p.reason) for p in result.evictions] == [
        (0, "space"),
        (1, "space"),
        (2, "space"),
    ]
    assert result.bytes == 102 * MB and result.free_after == 201 * MB
    assert (result.low_free_bytes, result.target_free_bytes) == (100 * MB, 200 * MB)
    assert not result.short_of_target


def test_between_the_marks_eviction_does_not_start() -> None:
    policy = Policy(Threshold.parse("10%"), Threshold.parse("20%"))
    assert evicted(DiskUsage(1000 * MB, 150 * MB), policy, studies(50 * MB), NOW) == []


def test_without_a_target_eviction_stops_at_the_low_mark() -> None:
    policy = Policy(Threshold.parse("100MB"))
    usage = DiskUsage(1000 * MB, 70 * MB)
    assert evicted(usage, policy, studies(20 * MB, 20 * MB, 20 * MB), NOW) == [
        (0, "space"),
        (1, "space"),
    ]


def test_a_share_target_below_a_size_low_mark_counts_as_the_low_mark() -> None:
    policy = Policy(Threshold.parse("100MB"), Threshold.parse("5%"))  # 50 MB on this disk
    usage = DiskUsage(1000 * MB, 90 * MB)
    assert evicted(usage, policy, studies(5 * MB, 5 * MB, 5 * MB), NOW) == [
        (0, "space"),
        (1, "space"),
    ]


def test_studies_past_the_maximum_age_go_whatever_the_space() -> None:
    policy = Policy(max_age_days=7)
    candidates = studies(1, 1, 1, 1, 1, days_old=10)  # 10, 9, 8, 7 and 6 days old
    assert evicted(DiskUsage(1000 * MB, 900 * MB), policy, candidates, NOW) == [
        (0, "age"),
        (1, "age"),
        (2, "age"),
    ]


def test_age_and_space_together() -> None:
    policy = Policy(Threshold.parse("100MB"), Threshold.parse("150MB"), max_age_days=9.5)
    candidates = studies(10 * MB, 20 * MB, 30 * MB, 30 * MB)
    assert evicted(DiskUsage(1000 * MB, 95 * MB), policy, candidates, NOW) == [
        (0, "age"),
        (1, "space"),
        (2, "space"),
    ]


def test_a_disabled_policy_evicts_nothing() -> None:
    assert evicted(DiskUsage(1000 * MB, 0), Policy(), studies(MB), NOW) == []


def test_short_of_target_when_every_candidate_is_not_enough() -> None:
    policy = Policy(Threshold.parse("10%"), Threshold.parse("20%"))
    result = plan(DiskUsage(1000 * MB, 10 * MB), policy, studies(MB, MB), NOW)
    assert len(result.evictions) == 2 and result.short_of_target


def test_reads_only_the_candidates_it_needs() -> None:
    read: list[int] = []

    def oldest_first() -> Iterator[Candidate]:
        for candidate in studies(*[10 * MB] * 1000):
            read.append(candidate.pk)
            yield candidate

    policy = Policy(Threshold.parse("100MB"))
    assert len(plan(DiskUsage(1000 * MB, 75 * MB), policy, oldest_first(), NOW).evictions) == 3
    assert read == [0, 1, 2, 3]


@given(
    free=st.integers(0, 1000),
    low=st.integers(0, 60),
    extra=st.integers(0, 39),
    sizes=st.lists(st.integers(0, 100), max_size=30),
)
def test_eviction_is_the_shortest_oldest_prefix_that_reaches_the_target(
    free: int, low: int, extra: int, sizes: list[int]
) -> None:
    total = 1000
    policy = Policy(Threshold.parse(f"{low}%"), Threshold.parse(f"{low + extra}%"))
    result = plan(DiskUsage(total, free), policy, studies(*sizes), NOW)
    count = len(result.evictions)
    assert [p.candidate.pk for p in result.evictions] == list(range(count))
    low_bytes, target_bytes = total * low // 100, total * (low + extra) // 100
    if free >= low_bytes:
        assert count == 0
    else:
        reached = free + sum(sizes[:count]) >= target_bytes
        assert reached or count == len(sizes)
        assert count == 0 or free + sum(sizes[: count - 1]) < target_bytes  # none too many


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "disk", "4m") as mount:
        yield mount


def test_disk_usage_reads_the_filesystem(small_disk: Path) -> None:
    before = disk_usage(small_disk)
    assert before.total == 4 * 1024**2 and before.free == before.total
    (small_disk / "ballast").write_bytes(b"\0" * 1024**2)
    after = disk_usage(small_disk)
    assert after.free == before.free - 1024**2 and after.used == 1024**2
    # A folder not made yet is measured on the filesystem it will be on.
    assert disk_usage(small_disk / "not" / "yet").total == before.total

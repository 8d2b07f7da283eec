"""Which studies retention would evict: the policy, and the catalog facts it is fed.

dcmdb is not an archival backup. When the archive's free space falls below the low mark,
the oldest studies (by reception) go until free space is back at the target; studies
older than the maximum age go whatever the space. Never a pinned study, nor one still in
flight: a series still receiving, completing or converting (converting for at most a day,
see `STALLED_CONVERSION`), an arrival within the stable age, or a retrieval from the PACS
queued or running for it.

`plan` is the decision itself, a pure function of the free-space figures and the
candidates, so that the retention service and the dry run of ``GET /storage`` decide
alike and tests can drive it with any figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.orm import Session

from shared.catalog.models import (
    LISTED,
    Eviction,
    InstanceHistory,
    NiftiOutput,
    RetrievalJob,
    RetrievalStudy,
    Series,
    Study,
)
from shared.catalog.states import Completion, ConversionState, EvictionReason, JobState
from shared.disk import DiskUsage, Threshold
from shared.settings import StorageSettings


@dataclass(frozen=True)
class Policy:
    """The retention settings: free-space marks and the maximum age."""

    low_free: Threshold | None = None
    target_free: Threshold | None = None  # None: the low mark
    max_age_days: float | None = None

    @classmethod
    def of(cls, settings: StorageSettings) -> Policy:
        return cls(
            settings.retention_low_free,
            settings.retention_target_free,
            settings.retention_max_age_days,
        )

    @property
    def enabled(self) -> bool:
        return self.low_free is not None or self.max_age_days is not None


@dataclass(frozen=True)
class Candidate:
    """A study retention may evict: listed, not pinned, not in flight."""

    pk: int
    study_uid: str
    physician_folder: str
    folder: str
    study_date: str
    received_at: datetime
    size_bytes: int  # its DICOM files and NIfTI volumes, as the catalog counts them


@dataclass(frozen=True)
class Planned:
    candidate: Candidate
    reason: EvictionReason


@dataclass(frozen=True)
class Plan:
    usage: DiskUsage
    low_free_bytes: int | None
    target_free_bytes: int | None
    freeing: int = 0  # bytes of evictions under way, counted as free already
    evictions: list[Planned] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(p.candidate.size_bytes for p in self.evictions)

    @property
    def free_after(self) -> int:
        """Free space once the plan is carried out, as far as the catalog's sizes tell."""
        return self.usage.free + self.freeing + self.bytes

    @property
    def short_of_target(self) -> bool:
        """Low on space and nothing left to evict that would bring it back to the target."""
        return (
            self.low_free_bytes is not None
            and self.usage.free + self.freeing < self.low_free_bytes
            and self.target_free_bytes is not None
            and self.free_after < self.target_free_bytes
        )


def plan(
    usage: DiskUsage,
    policy: Policy,
    candidates: Iterable[Candidate],
    now: datetime,
    freeing: int = 0,
) -> Plan:
    """What to evict, in order: the candidates (oldest received first) past the maximum
    age, and, when free space is below the low mark, the oldest others until it would be
    back at the target. ``freeing``: bytes that evictions under way are freeing. Reads
    only as many candidates as it needs."""
    low = policy.low_free.bytes_of(usage.total) if policy.low_free else None
    target_threshold = policy.target_free or policy.low_free
    target = target_threshold.bytes_of(usage.total) if target_threshold else None
    if low is not None and target is not None:
        target = max(target, low)  # a percentage and a size can cross on a small disk
    result = Plan(usage, low, target, freeing)
    if not policy.enabled:
        return result
    too_old = now - timedelta(days=policy.max_age_days) if policy.max_age_days is not None else None
    free = usage.free + freeing
    short = low is not None and free < low
    for candidate in candidates:
        if too_old is not None and candidate.received_at < too_old:
            reason = EvictionReason.AGE
        elif short and target is not None and free < target:
            reason = EvictionReason.SPACE
        else:
            break  # the rest are younger, and the space is back
        result.evictions.append(Planned(candidate, reason))
        free += candidate.size_bytes
    return result


# The catalog's side ---------------------------------------------------------------------


def candidates(
    session: Session, now: datetime, stable_age: float, page: int = 200
) -> Iterator[Candidate]:
    """The studies retention may evict, oldest received first, read a page at a time."""
    after: tuple[datetime, int] | None = None
    while True:
        query = (
            select(
                Study.id,
                Study.study_instance_uid,
                Study.physician_folder,
                Study.folder,
                Study.study_date,
                Study.received_at,
            )
            .where(LISTED, Study.pinned.is_(False))
            .order_by(Study.received_at, Study.id)
            .limit(page)
        )
        if after is not None:
            query = query.where(tuple_(Study.received_at, Study.id) > tuple_(*after))
        rows = session.execute(query).all()
        if not rows:
            return
        pks = [row.id for row in rows]
        busy = in_flight(session, pks, now, stable_age)
        sizes = study_sizes(session, pks)
        for row in rows:
            if row.id not in busy:
                yield Candidate(
                    pk=row.id,
                    study_uid=row.study_instance_uid,
                    physician_folder=row.physician_folder,
                    folder=row.folder,
                    study_date=row.study_date,
                    received_at=row.received_at,
                    size_bytes=sizes.get(row.id, 0),
                )
        after = (rows[-1].received_at, rows[-1].id)


# A conversion still pending this long after its series completed has stalled: its
# completion was dead-lettered, or no converter runs. It no longer keeps the study from
# eviction, or one lost message would keep the disk from ever being freed.
STALLED_CONVERSION = timedelta(days=1)


def in_flight(session: Session, study_pks: list[int], now: datetime, stable_age: float) -> set[int]:
    """Those of the studies that something is still working on."""
    if not study_pks:
        return set()
    recent = now - timedelta(seconds=stable_age)
    busy = set(
        session.scalars(
            select(Series.study_pk).where(
                Series.study_pk.in_(study_pks),
                or_(
                    Series.completion != Completion.COMPLETE,  # receiving
                    and_(  # completing (not yet announced) or converting
                        Series.conversion == ConversionState.PENDING,
                        Series.completed_at >= now - STALLED_CONVERSION,
                    ),
                    Series.last_received_at >= recent,
                ),
            )
        )
    )
    busy |= set(
        session.scalars(
            select(Study.id).where(Study.id.in_(study_pks), Study.last_received_at >= recent)
        )
    )
    busy |= set(
        session.scalars(
            select(Study.id)
            .join(RetrievalStudy, RetrievalStudy.study_uid == Study.study_instance_uid)
            .join(RetrievalJob, RetrievalJob.id == RetrievalStudy.job_id)
            .where(
                Study.id.in_(study_pks), RetrievalJob.state.in_((JobState.QUEUED, JobState.RUNNING))
            )
        )
    )
    return busy


def study_sizes(session: Session, study_pks: list[int]) -> dict[int, int]:
    """Bytes of each study's DICOM files and NIfTI volumes, and of the copies of its
    instances that others replaced (kept in history/ until the study goes)."""
    sizes: dict[int, int] = {}
    dicom = select(Series.study_pk, func.coalesce(func.sum(Series.size_bytes), 0)).group_by(
        Series.study_pk
    )
    nifti = (
        select(Series.study_pk, func.coalesce(func.sum(NiftiOutput.size), 0))
        .join(NiftiOutput, NiftiOutput.series_pk == Series.id)
        .group_by(Series.study_pk)
    )
    for query in (dicom, nifti):
        for pk, size in session.execute(query.where(Series.study_pk.in_(study_pks))):
            sizes[pk] = sizes.get(pk, 0) + int(size)
    replaced = (
        select(Study.id, func.coalesce(func.sum(InstanceHistory.old_size), 0))
        .join(InstanceHistory, InstanceHistory.study_instance_uid == Study.study_instance_uid)
        .where(Study.id.in_(study_pks))
        .group_by(Study.id)
    )
    for pk, size in session.execute(replaced):
        sizes[pk] = sizes.get(pk, 0) + int(size)
    return sizes


def plan_evictions(
    session: Session,
    measure: Callable[[], DiskUsage],
    policy: Policy,
    now: datetime,
    stable_age: float,
) -> Plan:
    """The plan for the catalog and the disk as they are now: what the next round would do.

    Another retention process may be evicting meanwhile. The catalog is read in one
    snapshot taken before the disk is measured, and studies being evicted count as freed
    space: a study evicted meanwhile is then counted twice at worst (this round evicts too
    little, the next one catches up), never missed (which would evict too much).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    freeing = session.scalar(
        select(func.coalesce(func.sum(Eviction.size_bytes), 0)).where(Eviction.evicted_at.is_(None))
    )
    return plan(measure(), policy, candidates(session, now, stable_age), now, int(freeing or 0))

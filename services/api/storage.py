"""Disk space and retention as the API reports them: usage and the next eviction (a dry
run); pins.

The dry run is `shared.retention.plan` on the catalog and the archive's free space as
they are now, the very decision the retention service takes on its next round.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.api.schemas import (
    CatalogUsage,
    DiskSpace,
    NextEviction,
    PlannedEviction,
    Storage,
    StorageThresholds,
)
from services.api.settings import ApiSettings
from shared.catalog.models import LISTED, NiftiOutput, Series, Study
from shared.disk import DiskUsage, disk_usage
from shared.retention import Plan, Policy, plan_evictions


def storage_report(
    session: Session, settings: ApiSettings, limit: int, labs: frozenset[str] | None
) -> Storage:
    """Disk usage, free space, the retention thresholds, and what the next eviction
    would remove (a dry run), listing at most `limit` of its studies. The catalog's usage
    and the eviction's studies are those of `labs` only (None: every lab)."""
    plan = plan_evictions(
        session,
        lambda: disk_usage(settings.archive_root),
        Policy.of(settings),
        datetime.now(UTC),
        settings.stable_age,
    )
    archive, incoming = plan.usage, disk_usage(settings.incoming_dir)
    return Storage(
        archive=_space(archive),
        incoming=_space(incoming),
        receiving=not incoming.below(settings.min_free),
        catalog=_catalog_usage(session, labs),
        thresholds=StorageThresholds(
            low_free=_text(settings.retention_low_free),
            low_free_bytes=plan.low_free_bytes,
            target_free=_text(settings.retention_target_free or settings.retention_low_free),
            target_free_bytes=plan.target_free_bytes,
            max_age_days=settings.retention_max_age_days,
            min_free=str(settings.min_free),
            min_free_bytes=settings.min_free.bytes_of(incoming.total),
        ),
        next_eviction=_next_eviction(plan, limit, labs),
    )


def set_pinned(session: Session, study_uid: str, pinned: bool) -> bool:
    """Pin or unpin a listed study; False when there is no such study. Admin keys see
    every lab (`shared.keys`), so no lab narrows it."""
    with session.begin():
        # Conditional: a study retention marked evicting meanwhile is gone already.
        changed = session.execute(
            update(Study)
            .where(Study.study_instance_uid == study_uid, LISTED)
            .values(pinned=pinned)
            .execution_options(synchronize_session=False)
        )
    return getattr(changed, "rowcount", 0) == 1


def _space(usage: DiskUsage) -> DiskSpace:
    return DiskSpace(total_bytes=usage.total, used_bytes=usage.used, free_bytes=usage.free)


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)


def _catalog_usage(session: Session, labs: frozenset[str] | None) -> CatalogUsage:
    of_labs = [] if labs is None else [Study.physician_folder.in_(sorted(labs))]
    studies, pinned, evicting = session.execute(
        select(
            func.count(Study.id),
            func.count(Study.id).filter(LISTED, Study.pinned.is_(True)),
            func.count(Study.id).filter(Study.evicting_at.is_not(None)),
        ).where(*of_labs)
    ).one()
    dicom = session.scalar(
        select(func.coalesce(func.sum(Series.size_bytes), 0))
        .join(Study, Study.id == Series.study_pk)
        .where(LISTED, *of_labs)
    )
    nifti = session.scalar(
        select(func.coalesce(func.sum(NiftiOutput.size), 0))
        .join(Series, Series.id == NiftiOutput.series_pk)
        .join(Study, Study.id == Series.study_pk)
        .where(LISTED, *of_labs)
    )
    return CatalogUsage(
        studies=int(studies) - int(evicting),
        size_bytes=int(dicom or 0) + int(nifti or 0),
        pinned=int(pinned),
        evicting=int(evicting),
    )


def _next_eviction(plan: Plan, limit: int, labs: frozenset[str] | None) -> NextEviction:
    evictions = [p for p in plan.evictions if labs is None or p.candidate.physician_folder in labs]
    return NextEviction(
        study_count=len(evictions),
        size_bytes=sum(p.candidate.size_bytes for p in evictions),
        free_after_bytes=plan.free_after,
        studies=[
            PlannedEviction(
                study_uid=p.candidate.study_uid,
                physician_folder=p.candidate.physician_folder,
                folder=f"{p.candidate.physician_folder}/{p.candidate.folder}",
                study_date=p.candidate.study_date or None,
                received_at=p.candidate.received_at,
                size_bytes=p.candidate.size_bytes,
                reason=p.reason,
            )
            for p in evictions[:limit]
        ],
    )

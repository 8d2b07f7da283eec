"""The per-series instance counts listings read (Series.instance_count, .size_bytes).

Recounted from the instances rows, in the transaction that changed them, for the series
that transaction touched: a count can never drift from the rows it counts.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.catalog.models import Instance, Series


def recount_series(session: Session, series_pks: Collection[int]) -> None:
    if not series_pks:
        return
    count = select(func.count(Instance.id)).where(Instance.series_pk == Series.id)
    size = select(func.coalesce(func.sum(Instance.size), 0)).where(Instance.series_pk == Series.id)
    session.execute(
        update(Series)
        .where(Series.id.in_(sorted(series_pks)))
        .values(instance_count=count.scalar_subquery(), size_bytes=size.scalar_subquery())
        .execution_options(synchronize_session=False)
    )

"""``reconciliation.missing``: a scanner's check that left differences open (studies the
PACS lacks, see `shared.reconciliation`), told to the labs concerned and to the admins.

The catalog is the outbox: a finished check is taken once, by one conditional UPDATE of
its ``notified_at`` (several notifiers: one wins), in the transaction that writes its
deliveries. Each lab's webhooks hear of that lab's open differences only: their count
and the nearest deadline (the day the scanner deletes a study), and each difference.
Webhooks registered under ``DCMDB_ADMIN_WEBHOOK_LAB`` are the admins': they hear of
every lab's.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.notifier.catalog import Catalog
from services.notifier.recognition import Content, Recognised, enqueue, subscribers
from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import CheckState, DifferenceState, WebhookEvent
from shared.catalog.types import now


def finished_checks(catalog: Catalog, admin_lab: str) -> int:
    """The deliveries of the checks that ended since the last look; how many."""
    with catalog.reader() as session:
        run_ids = session.scalars(
            select(ReconciliationRun.id)
            .where(
                ReconciliationRun.state == CheckState.CHECKED,
                ReconciliationRun.notified_at.is_(None),
            )
            .order_by(ReconciliationRun.id)
            .limit(50)
        ).all()
    made = 0
    for run_id in run_ids:
        with catalog.writer.begin() as session:
            made += _finished_check(session, run_id, admin_lab)
    return made


def _finished_check(session: Session, run_id: int, admin_lab: str) -> int:
    taken = session.execute(
        update(ReconciliationRun)
        .where(ReconciliationRun.id == run_id, ReconciliationRun.notified_at.is_(None))
        .values(notified_at=now())
        .execution_options(synchronize_session=False)
    )
    run = session.get(ReconciliationRun, run_id)
    if getattr(taken, "rowcount", 0) != 1 or run is None:
        return 0  # another notifier did
    rows = session.scalars(
        select(Difference)
        .where(Difference.scanner == run.scanner, Difference.state != DifferenceState.CLOSED)
        .order_by(Difference.deadline, Difference.id)
    ).all()
    by_lab: dict[str, list[Difference]] = defaultdict(list)
    for row in rows:
        by_lab[row.lab].append(row)
    audiences = [(lab, lab, found) for lab, found in sorted(by_lab.items())]
    if rows:
        audiences.append((admin_lab, "", list(rows)))
    made = 0
    for hooks_lab, suffix, found in audiences:
        event = Recognised(
            WebhookEvent.RECONCILIATION_MISSING,
            f"reconciliation.missing:{run.id}:{suffix}",
            f"reconciliation/{run.scanner}",
            run.finished_at or now(),
        )
        hooks = subscribers(session, hooks_lab).get(WebhookEvent.RECONCILIATION_MISSING, [])
        made += enqueue(session, hooks, event, _content(run, found))
    return made


def _content(run: ReconciliationRun, rows: list[Difference]) -> Content:
    def content(hook: Any) -> dict[str, Any]:
        return {
            "reconciliation": {
                "scanner": run.scanner,
                "pacs": run.pacs,
                "run": run.id,
                "first_day": str(run.first_day),
                "last_day": str(run.last_day),
            },
            "count": len(rows),
            "nearest_deadline": str(min(row.deadline for row in rows)),
            "differences": [
                {
                    "id": row.id,
                    "lab": row.lab,
                    "study_uid": row.study_uid,
                    "series_uid": row.series_uid or None,
                    "kind": str(row.kind),
                    "state": str(row.state),
                    "study_date": str(row.study_date),
                    "deadline": str(row.deadline),
                    "scanner_instances": row.scanner_instances,
                    "pacs_instances": row.pacs_instances,
                }
                for row in rows
            ],
        }

    return content

"""Recognising what labs are told of, and writing each delivery in the same transaction
(the catalog is the outbox; `delivery` sends what is written here).

- ``study.ready`` and ``series.failed`` come from the converter's outcome events on the
  notifier's own queue; the catalog decides: a study is ready when each of its series is
  complete and its newest generation converted or skipped. Each event has a key of what
  makes it (``study.ready:<study>:<digest of its series and generations>``,
  ``series.failed:<series>:<generation>``), unique per webhook: an outcome redelivered by
  the broker, or the last two outcomes of a study arriving together, make one delivery; a
  study that grows a series and becomes ready again makes a new one.
- ``retrieval.finished`` comes from the catalog itself: a job in a final state with no
  row in ``notified_retrievals``. Whoever ends a job (the retriever, the API cancelling a
  queued one) only writes the catalog, and a notifier that was down finds the jobs when it
  is back. It waits until the studies the job moved are filed (or
  ``DCMDB_WEBHOOK_RETRIEVAL_WAIT`` passed): a study's lab is known once it is in the
  catalog. Each lab with studies in the job is told of its own studies only.

The study row is locked while its events are recognised, so that two notifiers give the
deliveries of one study their ids in the order they are recognised.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, selectinload

from services.notifier import payloads
from services.notifier.catalog import Catalog, insert_new
from services.notifier.payloads import Links, Privacy
from shared.catalog.models import LISTED, RetrievalJob, RetrievalStudy, Series, Study
from shared.catalog.states import (
    Completion,
    ConversionState,
    DeliveryState,
    JobState,
    StudyRetrievalState,
    WebhookEvent,
)
from shared.catalog.types import now
from shared.catalog.webhooks import NotifiedRetrieval, Webhook, WebhookDelivery
from shared.messages import SeriesConverted, SeriesFailed, SeriesSkipped

FINISHED_JOBS = tuple(state for state in JobState if state.finished)
_DONE = (ConversionState.CONVERTED, ConversionState.SKIPPED)


@dataclass(frozen=True)
class Recognised:
    """An event as its deliveries record it."""

    event: WebhookEvent
    key: str
    ordering_key: str
    occurred_at: datetime
    study_uid: str | None = None
    series_uid: str | None = None
    retrieval_id: int | None = None


Content = Callable[[Webhook], dict[str, Any]]  # a body's content for one webhook


def series_outcome(
    catalog: Catalog, links: Links, event: SeriesConverted | SeriesSkipped | SeriesFailed
) -> int:
    """The deliveries an outcome makes: ``series.failed``, ``study.ready``; how many."""
    with catalog.reader() as session:
        lab = session.scalar(
            select(Study.physician_folder).where(
                Study.study_instance_uid == event.study_instance_uid, LISTED
            )
        )
        if lab is None or session.scalar(select(Webhook.id).where(Webhook.lab == lab)) is None:
            return 0  # no webhook for the lab: nothing to write
    with catalog.writer.begin() as session:
        study = session.scalar(
            select(Study)
            .where(Study.study_instance_uid == event.study_instance_uid, LISTED)
            .with_for_update(of=Study)
        )
        if study is None:
            return 0
        hooks = subscribers(session, study.physician_folder)
        series = session.scalars(
            select(Series).where(Series.study_pk == study.id).order_by(Series.id)
        ).all()
        made = 0
        if isinstance(event, SeriesFailed):
            made += _series_failed(session, hooks, study, series, event, links)
        if ready(series):
            made += _study_ready(session, hooks, study, series, event.occurred_at, links)
        return made


def ready(series: Sequence[Series]) -> bool:
    """Whether every series is complete and its newest generation converted or skipped."""
    return bool(series) and all(
        s.completion == Completion.COMPLETE
        and s.converted_generation == s.generation
        and s.conversion in _DONE
        for s in series
    )


def _series_failed(
    session: Session,
    hooks: dict[WebhookEvent, list[Webhook]],
    study: Study,
    series: Sequence[Series],
    event: SeriesFailed,
    links: Links,
) -> int:
    failed = next((s for s in series if s.series_instance_uid == event.series_instance_uid), None)
    if failed is None:
        return 0
    recognised = Recognised(
        WebhookEvent.SERIES_FAILED,
        f"series.failed:{event.series_instance_uid}:{event.generation}",
        f"study/{study.study_instance_uid}",
        event.occurred_at,
        study.study_instance_uid,
        event.series_instance_uid,
    )

    def content(hook: Webhook) -> dict[str, Any]:
        privacy = Privacy.of(study.patient, hook.include_patient)
        facts = payloads.series_facts(failed, links, privacy)
        # The reason the event gave: the catalog's may already be a later generation's.
        facts["reason"], facts["generation"] = privacy.text(event.reason), event.generation
        return {
            "study": payloads.study_facts(study, series, links, privacy),
            "series": facts,
        }

    return enqueue(session, hooks.get(WebhookEvent.SERIES_FAILED, []), recognised, content)


def _study_ready(
    session: Session,
    hooks: dict[WebhookEvent, list[Webhook]],
    study: Study,
    series: Sequence[Series],
    occurred_at: datetime,
    links: Links,
) -> int:
    generations = "\n".join(sorted(f"{s.series_instance_uid}:{s.generation}" for s in series))
    digest = hashlib.sha256(generations.encode()).hexdigest()[:16]
    uid = study.study_instance_uid
    recognised = Recognised(
        WebhookEvent.STUDY_READY, f"study.ready:{uid}:{digest}", f"study/{uid}", occurred_at, uid
    )

    def content(hook: Webhook) -> dict[str, Any]:
        privacy = Privacy.of(study.patient, hook.include_patient)
        return {
            "study": payloads.study_facts(study, series, links, privacy),
            "series": [payloads.series_facts(s, links, privacy) for s in series],
        }

    return enqueue(session, hooks.get(WebhookEvent.STUDY_READY, []), recognised, content)


def finished_retrievals(catalog: Catalog, links: Links, wait: float) -> int:
    """The deliveries of the retrieval jobs that ended since the last look; how many."""
    with catalog.reader() as session:
        job_ids = session.scalars(
            select(RetrievalJob.id)
            .where(
                RetrievalJob.state.in_(FINISHED_JOBS),
                ~exists().where(NotifiedRetrieval.job_id == RetrievalJob.id),
            )
            .order_by(RetrievalJob.id)
            .limit(50)
        ).all()
    made = 0
    for job_id in job_ids:
        with catalog.writer.begin() as session:
            made += _finished_job(session, job_id, links, wait)
    return made


def _finished_job(session: Session, job_id: int, links: Links, wait: float) -> int:
    job = session.get(RetrievalJob, job_id, options=[selectinload(RetrievalJob.studies)])
    if job is None:
        return 0
    uids = [moved.study_uid for moved in job.studies]
    filed = {
        study.study_instance_uid: study
        for study in session.scalars(
            select(Study)
            .where(Study.study_instance_uid.in_(uids), LISTED)
            .options(selectinload(Study.series), selectinload(Study.patient))
        )
    }
    ended = job.finished_at or now()
    moved_unfiled = any(
        m.state == StudyRetrievalState.COMPLETED and m.study_uid not in filed for m in job.studies
    )
    if moved_unfiled and now() - ended < timedelta(seconds=wait):
        return 0  # the sorter has not filed them yet: look again later
    recognised = {"job_id": job.id, "recognised_at": now()}
    if not insert_new(session, NotifiedRetrieval, recognised, ["job_id"]):
        return 0  # another notifier did
    by_lab: dict[str, list[tuple[RetrievalStudy, Study]]] = defaultdict(list)
    for moved in job.studies:
        if moved.study_uid in filed:
            study = filed[moved.study_uid]
            by_lab[study.physician_folder].append((moved, study))
    made = 0
    for lab, studies in sorted(by_lab.items()):
        event = Recognised(
            WebhookEvent.RETRIEVAL_FINISHED,
            f"retrieval.finished:{job.id}",
            f"retrieval/{job.id}",
            ended,
            retrieval_id=job.id,
        )
        hooks = subscribers(session, lab).get(WebhookEvent.RETRIEVAL_FINISHED, [])
        made += enqueue(session, hooks, event, _job_content(job, studies, links))
    return made


def _job_content(
    job: RetrievalJob, studies: list[tuple[RetrievalStudy, Study]], links: Links
) -> Content:
    def content(hook: Webhook) -> dict[str, Any]:
        listed = [
            payloads.retrieved_study(
                moved, study, study.series, links, Privacy.of(study.patient, hook.include_patient)
            )
            for moved, study in studies
        ]
        return {
            "retrieval": payloads.retrieval_facts(job, links),
            "counts": {
                "studies": len(listed),
                "series": sum(s["counts"]["series"] for s in listed),
                "instances": sum(s["counts"]["instances"] for s in listed),
            },
            "studies": listed,
        }

    return content


def subscribers(session: Session, lab: str) -> dict[WebhookEvent, list[Webhook]]:
    """The lab's webhooks, by the events each wants."""
    found: dict[WebhookEvent, list[Webhook]] = defaultdict(list)
    for hook in session.scalars(select(Webhook).where(Webhook.lab == lab).order_by(Webhook.id)):
        for event in hook.event_set:
            found[event].append(hook)
    return found


def enqueue(
    session: Session, hooks: Sequence[Webhook], recognised: Recognised, content: Content
) -> int:
    """A pending delivery of the event to each webhook that has none yet; how many."""
    made = 0
    moment = now()
    for hook in hooks:
        known = select(WebhookDelivery.id).where(
            WebhookDelivery.webhook_id == hook.id, WebhookDelivery.event_key == recognised.key
        )
        if session.scalar(known) is not None:
            continue
        delivery = str(uuid.uuid4())
        text = payloads.body(
            recognised.event, delivery, recognised.occurred_at, hook.lab, **content(hook)
        )
        row = {
            "delivery_id": delivery,
            "webhook_id": hook.id,
            "event": recognised.event,
            "event_key": recognised.key,
            "ordering_key": recognised.ordering_key,
            "study_uid": recognised.study_uid,
            "series_uid": recognised.series_uid,
            "retrieval_id": recognised.retrieval_id,
            "body": text,
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "created_at": moment,
            "next_attempt_at": moment,
            "last_error": "",
        }
        made += insert_new(session, WebhookDelivery, row, ["webhook_id", "event_key"])
    return made

"""Recognising what labs are told of, on the real catalog (SQLite and PostgreSQL): one
delivery per event and webhook, for the lab's webhooks only, with nothing of the patient
unless the webhook asks for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select, text

from services.notifier import recognition
from services.notifier.catalog import Catalog
from services.notifier.payloads import Links
from shared import webhooks
from shared.catalog.database import MIGRATIONS, create_catalog_engine, migrate
from shared.catalog.states import ConversionState, JobState, StudyRetrievalState, WebhookEvent
from shared.catalog.webhooks import NotifiedRetrieval, Webhook, WebhookDelivery
from tests.notifier.rows import PATIENT_ID, add_series, concluded, file_study, finished_job

pytestmark = pytest.mark.integration

LAB, OTHER_LAB = "SMITH_JOHN", "DOE_JANE"
LINKS = Links("https://dcmdb.example.org")
READY, FAILED, RETRIEVED = (
    WebhookEvent.STUDY_READY,
    WebhookEvent.SERIES_FAILED,
    WebhookEvent.RETRIEVAL_FINISHED,
)


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url)
    yield opened
    opened.dispose()


def hook(catalog: Catalog, lab: str, *events: WebhookEvent, include_patient: bool = False) -> int:
    with catalog.writer.begin() as session:
        return webhooks.register(
            session,
            lab=lab,
            url="http://127.0.0.1:9/",
            events=events,
            include_patient=include_patient,
            created_by="test",
        ).id


def deliveries(catalog: Catalog, webhook_id: int) -> list[WebhookDelivery]:
    with catalog.reader() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.webhook_id == webhook_id)
                .order_by(WebhookDelivery.id)
            )
        )


def bodies(catalog: Catalog, webhook_id: int) -> list[dict[str, Any]]:
    return [json.loads(d.body) for d in deliveries(catalog, webhook_id)]


def test_a_study_is_ready_once_each_series_is_converted_or_skipped(catalog: Catalog) -> None:
    ready_hook = hook(catalog, LAB, READY)
    failures_only = hook(catalog, LAB, FAILED)
    other_lab = hook(catalog, OTHER_LAB, READY, FAILED, RETRIEVED)
    study = file_study(catalog.writer, LAB, series=2)
    first = concluded(catalog.writer, study, study.series[0], ConversionState.CONVERTED)
    assert recognition.series_outcome(catalog, LINKS, first) == 0, "one series is pending"
    last = concluded(catalog.writer, study, study.series[1], ConversionState.SKIPPED)
    assert recognition.series_outcome(catalog, LINKS, last) == 1
    # The broker redelivers both; nothing new.
    assert recognition.series_outcome(catalog, LINKS, last) == 0
    assert recognition.series_outcome(catalog, LINKS, first) == 0
    assert deliveries(catalog, failures_only) == deliveries(catalog, other_lab) == []
    [delivery] = deliveries(catalog, ready_hook)
    assert (delivery.event, delivery.study_uid, delivery.state) == (READY, study.uid, "pending")
    body = json.loads(delivery.body)
    assert body["event"] == "study.ready"
    assert body["delivery"] == delivery.delivery_id
    assert body["lab"] == LAB
    assert body["occurred_at"] == last.occurred_at.isoformat()
    assert body["study"]["study_uid"] == study.uid
    assert body["study"]["link"] == f"https://dcmdb.example.org/studies/{study.uid}"
    assert body["study"]["counts"] == {
        "series": 2, "instances": 30, "converted": 1, "skipped": 1, "failed": 0, "pending": 0
    }  # fmt: skip
    assert [s["series_uid"] for s in body["series"]] == list(study.series)
    assert [s["conversion"] for s in body["series"]] == ["converted", "skipped"]
    assert body["series"][0]["link"] == f"https://dcmdb.example.org/series/{study.series[0]}"
    assert "patient" not in body["study"] and "folder" not in body["study"]
    assert PATIENT_ID not in delivery.body and "Lovelace" not in delivery.body


def test_a_study_that_grows_a_series_is_ready_again(catalog: Catalog) -> None:
    ready_hook = hook(catalog, LAB, READY)
    study = file_study(catalog.writer, LAB, series=1)
    event = concluded(catalog.writer, study, study.series[0], ConversionState.CONVERTED)
    assert recognition.series_outcome(catalog, LINKS, event) == 1
    grown = add_series(catalog.writer, study)
    assert recognition.series_outcome(catalog, LINKS, event) == 0, "a series is pending"
    late = concluded(catalog.writer, grown, grown.series[1], ConversionState.CONVERTED)
    assert recognition.series_outcome(catalog, LINKS, late) == 1
    ready = bodies(catalog, ready_hook)
    assert [b["study"]["counts"]["series"] for b in ready] == [1, 2]
    assert len({d.event_key for d in deliveries(catalog, ready_hook)}) == 2


def test_a_failed_series_is_told_with_its_reason_and_the_patient_only_when_asked(
    catalog: Catalog,
) -> None:
    private = hook(catalog, LAB, READY, FAILED)
    with_patient = hook(catalog, LAB, FAILED, include_patient=True)
    study = file_study(catalog.writer, LAB, series=2, description=f"Brain {PATIENT_ID}")
    reason = f"no readable DICOM instance (/data/archive/{LAB}/20260101_{PATIENT_ID}/1.dcm)"
    event = concluded(catalog.writer, study, study.series[0], ConversionState.FAILED, reason)
    assert recognition.series_outcome(catalog, LINKS, event) == 2
    assert recognition.series_outcome(catalog, LINKS, event) == 0
    [told] = bodies(catalog, private)
    assert told["event"] == "series.failed"
    assert told["series"]["series_uid"] == study.series[0]
    assert told["series"]["generation"] == 1
    masked = f"no readable DICOM instance (/data/archive/{LAB}/20260101_***/1.dcm)"
    assert told["series"]["reason"] == masked
    assert told["study"]["description"] == "Brain ***"
    assert told["study"]["counts"]["failed"] == 1
    assert PATIENT_ID not in json.dumps(told) and "patient" not in told["study"]
    [open_body] = bodies(catalog, with_patient)
    assert open_body["study"]["patient"] == {"id": PATIENT_ID, "name": "Lovelace^Augusta^Ada"}
    assert open_body["study"]["folder"].startswith(f"{LAB}/20260101_{PATIENT_ID}_")
    assert open_body["series"]["reason"] == reason
    # The other series converts: the study is not ready, one series failed.
    other = concluded(catalog.writer, study, study.series[1], ConversionState.CONVERTED)
    assert recognition.series_outcome(catalog, LINKS, other) == 0
    [failed] = deliveries(catalog, private)
    assert failed.ordering_key == f"study/{study.uid}" and failed.series_uid == study.series[0]


def test_an_outcome_of_a_lab_without_webhooks_or_an_unknown_study_writes_nothing(
    catalog: Catalog,
) -> None:
    hook(catalog, OTHER_LAB, READY, FAILED)
    study = file_study(catalog.writer, LAB, series=1)
    event = concluded(catalog.writer, study, study.series[0], ConversionState.FAILED)
    assert recognition.series_outcome(catalog, LINKS, event) == 0
    stranger = event.model_copy(update={"study_instance_uid": "1.2.3.4"})
    assert recognition.series_outcome(catalog, LINKS, stranger) == 0
    with catalog.reader() as session:
        assert session.scalars(select(WebhookDelivery)).all() == []


def test_a_finished_retrieval_tells_each_lab_of_its_own_studies_once(catalog: Catalog) -> None:
    ours, theirs = hook(catalog, LAB, RETRIEVED), hook(catalog, OTHER_LAB, RETRIEVED)
    not_told = hook(catalog, LAB, READY)
    mine, mine_too = file_study(catalog.writer, LAB), file_study(catalog.writer, LAB, series=1)
    other = file_study(catalog.writer, OTHER_LAB, series=1)
    moved = {
        mine.uid: StudyRetrievalState.COMPLETED,
        mine_too.uid: StudyRetrievalState.FAILED,
        other.uid: StudyRetrievalState.ALREADY_COMPLETE,
        "1.2.826.0.1.99": StudyRetrievalState.FAILED,  # never filed: no lab to tell
    }
    job_id = finished_job(catalog.writer, moved, JobState.PARTIAL)
    assert recognition.finished_retrievals(catalog, LINKS, wait=60) == 2
    assert recognition.finished_retrievals(catalog, LINKS, wait=60) == 0
    [body] = bodies(catalog, ours)
    assert body["event"] == "retrieval.finished" and body["lab"] == LAB
    assert body["retrieval"]["id"] == job_id and body["retrieval"]["state"] == "partial"
    assert body["retrieval"]["link"] == f"https://dcmdb.example.org/retrievals/{job_id}"
    assert [s["study_uid"] for s in body["studies"]] == [mine.uid, mine_too.uid]
    assert [s["retrieval"]["state"] for s in body["studies"]] == ["completed", "failed"]
    assert body["counts"] == {"studies": 2, "series": 3, "instances": 40}
    assert "query" not in body["retrieval"] and "reason" not in body["retrieval"]
    [their_body] = bodies(catalog, theirs)
    assert [s["study_uid"] for s in their_body["studies"]] == [other.uid]
    assert other.uid not in json.dumps(body) and mine.uid not in json.dumps(their_body)
    assert deliveries(catalog, not_told) == []
    [delivery] = deliveries(catalog, ours)
    assert (delivery.retrieval_id, delivery.ordering_key) == (job_id, f"retrieval/{job_id}")


def test_a_retrieval_waits_until_what_it_moved_is_filed(catalog: Catalog) -> None:
    ours = hook(catalog, LAB, RETRIEVED)
    filed = file_study(catalog.writer, LAB, series=1)
    coming = "1.2.826.0.1.3680043.99.1"
    job_id = finished_job(
        catalog.writer,
        {filed.uid: StudyRetrievalState.COMPLETED, coming: StudyRetrievalState.COMPLETED},
    )
    assert recognition.finished_retrievals(catalog, LINKS, wait=3600) == 0
    with catalog.reader() as session:
        assert session.get(NotifiedRetrieval, job_id) is None, "looked at again later"
    assert recognition.finished_retrievals(catalog, LINKS, wait=0) == 1, "waited long enough"
    [body] = bodies(catalog, ours)
    assert [s["study_uid"] for s in body["studies"]] == [filed.uid]


def test_jobs_that_ended_before_the_migration_are_not_news(catalog_url: str) -> None:
    engine = create_catalog_engine(catalog_url, writer=True)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0006")
        with engine.begin() as connection:
            for number, state in enumerate(("completed", "running", "cancelled", "queued"), 1):
                connection.execute(
                    text(
                        "INSERT INTO retrieval_jobs (id, state, origin, pacs, query, created_at,"
                        " attempts, cancel_requested, reason, gaps) VALUES (:id, :state,"
                        " 'request', 'PACS', '{}', CURRENT_TIMESTAMP, 0, false, '', '')"
                    ),
                    {"id": number, "state": state},
                )
        migrate(engine)
        with engine.connect() as connection:
            notified = connection.scalars(text("SELECT job_id FROM notified_retrievals"))
            assert sorted(notified) == [1, 3]
        catalog = Catalog.open(catalog_url)
        try:
            assert recognition.finished_retrievals(catalog, LINKS, wait=0) == 0
            with catalog.reader() as session:
                assert session.scalars(select(Webhook)).all() == []
        finally:
            catalog.dispose()
    finally:
        engine.dispose()

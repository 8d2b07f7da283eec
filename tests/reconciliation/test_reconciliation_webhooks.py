"""``reconciliation.missing``: a scanner's check with studies the PACS lacks is told once
to the webhooks of each lab concerned (that lab's differences only) and to the admins'
(every lab's), with the count and the nearest deadline."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.notifier.catalog import Catalog
from services.notifier.reconciliation import finished_checks
from shared import webhooks
from shared.catalog.states import WebhookEvent
from shared.catalog.webhooks import WebhookDelivery
from shared.reconciliation import reconcile_scanner
from tests.reconciliation.peers import site

pytestmark = pytest.mark.integration

MISSING = WebhookEvent.RECONCILIATION_MISSING
ADMINS = "dcmdb-admins"


def _hook(catalog: Catalog, lab: str, *events: WebhookEvent) -> int:
    with catalog.writer.begin() as session:
        return webhooks.register(
            session,
            lab=lab,
            url="http://127.0.0.1:9/",
            events=events,
            include_patient=False,
            created_by="test",
        ).id


def _bodies(catalog: Catalog, webhook_id: int) -> list[dict[str, Any]]:
    with catalog.reader() as session:
        rows = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        )
        return [json.loads(row.body) for row in rows]


def test_each_lab_and_the_admins_hear_of_what_the_pacs_lacks_once(
    tmp_path: Path, catalog_url: str
) -> None:
    catalog = Catalog.open(catalog_url)
    try:
        smith, jones = _hook(catalog, "SMITH_JOHN", MISSING), _hook(catalog, "JONES_ANN", MISSING)
        elsewhere = _hook(catalog, "DOE_JANE", MISSING)
        not_asked = _hook(catalog, "SMITH_JOHN", WebhookEvent.STUDY_READY)
        admins = _hook(catalog, ADMINS, MISSING)
        with site(tmp_path) as peers:
            settings = peers.settings(catalog_url)
            reconcile_scanner(settings, catalog.writer, settings.scanner("console"))
        assert finished_checks(catalog, ADMINS) == 3
        assert finished_checks(catalog, ADMINS) == 0  # once

        studies = peers.studies
        (body,) = _bodies(catalog, smith)
        assert (body["event"], body["lab"], body["count"]) == (
            "reconciliation.missing",
            "SMITH_JOHN",
            2,
        )
        assert body["nearest_deadline"] == str(studies.partial.date + dt.timedelta(days=14))
        assert {d["study_uid"] for d in body["differences"]} == {
            studies.partial.uid,
            studies.short.uid,
        }
        (body,) = _bodies(catalog, jones)
        assert body["count"] == 1 and body["differences"][0]["study_uid"] == studies.missing.uid
        assert body["nearest_deadline"] == str(studies.missing.date + dt.timedelta(days=14))
        (body,) = _bodies(catalog, admins)
        assert body["count"] == 3 and body["reconciliation"]["scanner"] == "console"
        assert _bodies(catalog, elsewhere) == _bodies(catalog, not_asked) == []
        assert "TEST^RECON" not in json.dumps(_bodies(catalog, admins))
    finally:
        catalog.dispose()

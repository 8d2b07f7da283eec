"""The whole of dcmdb, started as a user starts it (``dcmdb up``): an admin registers lab
webhooks through the API, a scanner sends a real study, and the lab's receiver is told
``study.ready``, signed, without the patient unless asked; another lab hears nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from shared import webhooks
from shared.naming import physician_folder
from tests.notifier.peers import WebhookReceiver
from tests.support import wait_for
from tests.system import Dcmdb, dicom_files, send_dicom

pytestmark = pytest.mark.e2e

ADMIN_KEY = "end-to-end-admin-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FOLDER = "siemens_xa10_enhanced_fmri"  # Referring Physician "Luci", 4 instances, one series


@pytest.fixture
def system(tmp_path: Path, broker_url: str) -> Iterator[Dcmdb]:
    dcmdb = Dcmdb(
        tmp_path / "data",
        broker_url,
        f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        extra_env={
            "DCMDB_STABLE_AGE": "1",
            "DCMDB_API_KEYS": f"{ADMIN_KEY}:admin",
            "DCMDB_NIGHTLY_RETRIEVE": "",
            "DCMDB_WEBHOOK_POLL_INTERVAL": "0.5",
            "DCMDB_WEBHOOK_RETRY_MIN": "0.5",
        },
    )
    dcmdb.start("up")
    try:
        dcmdb.wait_until_api_answers(120)
        yield dcmdb
    finally:
        dcmdb.stop()


@pytest.fixture
def receivers() -> Iterator[dict[str, WebhookReceiver]]:
    peers = {name: WebhookReceiver().start() for name in ("private", "open", "other lab")}
    yield peers
    for peer in peers.values():
        peer.stop()


def register(system: Dcmdb, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(f"http://127.0.0.1:{system.api_port}/webhooks", json=body, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_study_sent_is_told_ready_to_its_lab(
    system: Dcmdb, receivers: dict[str, WebhookReceiver], testdata: Path
) -> None:
    files = dicom_files(testdata / FOLDER)
    header = dcmread(files[0], stop_before_pixels=True)
    lab = physician_folder(str(header.ReferringPhysicianName))
    patient_id, patient_name = str(header.PatientID), str(header.PatientName)
    events = ["study.ready", "series.failed", "retrieval.finished"]
    hooks = {
        "private": register(
            system, {"lab": lab, "url": receivers["private"].url, "events": events}
        ),
        "open": register(
            system,
            {
                "lab": lab,
                "url": receivers["open"].url,
                "events": ["study.ready"],
                "include_patient": True,
            },
        ),  # fmt: skip
        "other lab": register(
            system, {"lab": "SOMEONE_ELSE", "url": receivers["other lab"].url, "events": events}
        ),
    }
    system.wait_until_listening()
    send_dicom(system.port, files)
    wait_for(
        lambda: receivers["private"].delivered() and receivers["open"].delivered(),
        240,
        "study.ready at the lab's receivers",
        0.5,
    )
    [told] = receivers["private"].delivered()
    body = told.json
    assert told.headers["X-Dcmdb-Event"] == "study.ready" == body["event"]
    assert webhooks.verify(hooks["private"]["secret"], told.body, told.headers["X-Dcmdb-Signature"])
    assert not webhooks.verify(
        hooks["open"]["secret"], told.body, told.headers["X-Dcmdb-Signature"]
    )
    assert body["lab"] == lab
    assert body["study"]["study_uid"] == str(header.StudyInstanceUID)
    assert body["study"]["link"] == f"/studies/{header.StudyInstanceUID}"
    assert body["study"]["counts"]["instances"] == len(files)
    assert body["study"]["counts"]["pending"] == body["study"]["counts"]["failed"] == 0
    assert [s["series_uid"] for s in body["series"]] == [str(header.SeriesInstanceUID)]
    assert body["series"][0]["conversion"] in ("converted", "skipped")
    for identifier in (patient_id, patient_name):
        assert identifier.encode() not in told.body, identifier
    assert "patient" not in body["study"] and "folder" not in body["study"]

    [told_open] = receivers["open"].delivered()
    assert told_open.json["study"]["patient"] == {"id": patient_id, "name": patient_name}
    assert webhooks.verify(
        hooks["open"]["secret"], told_open.body, told_open.headers["X-Dcmdb-Signature"]
    )

    api = f"http://127.0.0.1:{system.api_port}/webhooks"
    [logged] = httpx.get(f"{api}/{hooks['private']['id']}/deliveries", headers=ADMIN).json()
    assert (logged["state"], logged["attempts"], logged["last_status"]) == ("delivered", 1, 200)
    assert (
        logged["delivery_id"] == told.delivery and logged["study_uid"] == body["study"]["study_uid"]
    )
    assert httpx.get(f"{api}/{hooks['other lab']['id']}/deliveries", headers=ADMIN).json() == []
    assert receivers["other lab"].requests == []
    # The API knows what the links name.
    study = httpx.get(f"http://127.0.0.1:{system.api_port}{body['study']['link']}", headers=ADMIN)
    assert study.status_code == 200 and study.json()["study_uid"] == body["study"]["study_uid"]

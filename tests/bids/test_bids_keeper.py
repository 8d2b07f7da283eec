"""The converter service keeps the labs' BIDS datasets from the events of the `bids` queue:
a series' outcome makes its study's session, new rules name the lab's sessions again, an
eviction removes the session."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from services.converter.bids_views import actions
from services.retention import eviction
from shared.bids.dataset import RULES_FILE, dataset_root
from shared.broker import Publisher
from shared.broker_connection import connect
from shared.catalog.models import Series, Study
from shared.messages import BidsRulesChanged, Event, SeriesConverted, StudyEvicted, Topology
from shared.retention import candidates
from tests.arrivals import Sorter
from tests.bids.filed_sessions import XA30_T1W, FiledSessions
from tests.support import wait_for
from tests.system import Dcmdb

pytestmark = pytest.mark.integration

LAB = "unknown"


def publish(url: str, *events: Event) -> None:
    async def send() -> None:
        connection = await connect(url, name="test")
        try:
            publisher = Publisher(connection, Topology())
            await publisher.start()
            for event in events:
                await publisher.publish(event)
        finally:
            await connection.close()

    asyncio.run(send())


def converted(filed: FiledSessions, study: str) -> SeriesConverted:
    with filed.sorter.sessions() as session:
        series = session.scalars(
            select(Series).join(Study).where(Study.study_instance_uid == study)
        ).one()
        outputs = tuple(o.path for o in series.outputs)
        return SeriesConverted(
            study_instance_uid=study,
            series_instance_uid=series.series_instance_uid,
            generation=series.generation,
            outputs=outputs,
            engines=("dcm2niix",),
        )


def anat(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("sub-*/ses-*/anat/*.nii.gz"))


def test_the_converter_keeps_the_bids_views(
    sorter: Sorter, testdata: Path, catalog_url: str, broker_url: str
) -> None:
    filed = FiledSessions(sorter, testdata)
    study = filed.file(XA30_T1W)
    root = dataset_root(filed.archive, None, LAB)
    converter = Dcmdb(sorter.data, broker_url, catalog_url)
    converter.start("converter", name="converter")
    try:
        # Converted before the converter kept BIDS views (an upgrade): made at its start.
        wait_for(lambda: anat(root) == ["sub-001_ses-01_acq-tfl_T1w.nii.gz"], 60, "the session")
        second = filed.file(
            XA30_T1W,
            PatientID="P-2",
            SeriesInstanceUID=generate_uid(),
            StudyInstanceUID=generate_uid(),
        )
        publish(broker_url, converted(filed, second))
        wait_for(lambda: len(anat(root)) == 2, 60, "the second study's session")

        rules = {
            "descriptions": [
                {"datatype": "anat", "suffix": "T2w", "criteria": {"SeriesDescription": "*"}}
            ]
        }
        (root / RULES_FILE).parent.mkdir(parents=True, exist_ok=True)
        (root / RULES_FILE).write_text(json.dumps(rules))
        publish(broker_url, BidsRulesChanged(lab=LAB))
        renamed = ["sub-001_ses-01_T2w.nii.gz", "sub-002_ses-01_T2w.nii.gz"]
        wait_for(lambda: anat(root) == renamed, 60, "the sessions renamed")

        with sorter.sessions() as session:
            [candidate] = [
                c for c in candidates(session, datetime.now(UTC), 60) if c.study_uid == study
            ]
        evicting = eviction.claim(sorter.sessions, candidate, "space", 60)
        assert evicting is not None
        eviction.finish(sorter.sessions, filed.archive, evicting)  # the session goes with it
        assert (root / "participants.tsv").read_text() == "participant_id\nsub-002\n"
        assert not (root / "sub-001").exists()
        publish(broker_url, *eviction.unannounced(sorter.sessions))
        removed = "BIDS unknown sub-001 ses-01 removed"  # again, by the converter: nothing left
        wait_for(lambda: removed in converter.log("converter"), 60, "the eviction's event")
    finally:
        converter.stop()
    log = converter.log("converter")
    assert "BIDS sessions made for 1 studies converted before" in log


class Recorded:
    """Stands for the views: what the consumer asks of them, in order."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def refresh(self, uid: str) -> None:
        self.asked.append(("refresh", uid))

    def remove(self, uid: str) -> None:
        self.asked.append(("remove", uid))

    def refresh_lab(self, lab: str) -> None:
        self.asked.append(("lab", lab))


def test_a_batch_makes_each_session_once_after_its_last_change() -> None:
    def outcome(study: str) -> SeriesConverted:
        return SeriesConverted(
            study_instance_uid=study,
            series_instance_uid="1.2.3",
            generation=1,
            outputs=(),
            engines=(),
        )

    evicted = StudyEvicted(
        eviction_id=1,
        study_instance_uid="A",
        physician_folder=LAB,
        folder=f"{LAB}/a",
        reason="space",
        series=1,
        instances=1,
        size_bytes=1,
        received_at=datetime.now(UTC),
        evicted_at=datetime.now(UTC),
    )
    views = Recorded()
    changes = [outcome("A"), outcome("B"), outcome("A"), evicted, BidsRulesChanged(lab=LAB)]
    changes += [outcome("C"), outcome("A")]  # A fetched again after its eviction
    for action in actions(views, changes):  # type: ignore[arg-type]
        action()
    assert views.asked == [
        ("refresh", "B"),
        ("remove", "A"),
        ("lab", LAB),
        ("refresh", "C"),
        ("refresh", "A"),
    ]

"""A study's BIDS session as the converter keeps it (`shared.bids.views`): real series filed
and converted, named, linked, described; the next study of the patient its next session;
evicted, converted again and named by new rules, the dataset stays valid."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from services.retention import eviction
from shared.bids import dataset
from shared.bids.dataset import RULES_FILE, dataset_root
from shared.bids.rules import Rules
from shared.bids.views import BidsViews
from shared.catalog.models import Series, Study
from shared.catalog.states import ConversionState
from shared.retention import candidates
from tests.arrivals import Sorter
from tests.bids.filed_sessions import XA30_SESSION, XA30_T1W, FiledSessions
from tests.bids.validator import assert_valid
from tests.support import wait_for

LAB = "unknown"  # the XA30 series name no referring physician


@pytest.fixture
def filed(sorter: Sorter, testdata: Path) -> FiledSessions:
    return FiledSessions(sorter, testdata)


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def sidecar(root: Path, name: str) -> dict[str, object]:
    return json.loads((root / name).read_text())  # type: ignore[no-any-return]


def test_a_session_is_named_linked_and_described(filed: FiledSessions) -> None:
    study = filed.file(*XA30_SESSION, PatientID="P-4711", PatientName="Doe^Jane")
    spot = filed.views().refresh(study)
    assert spot is not None and (spot.subject, spot.session) == ("001", "01")
    root = dataset_root(filed.archive, None, LAB)
    ses = "sub-001/ses-01"
    stem = f"{ses}/%s/sub-001_ses-01_%s"
    bold, dwi = stem % ("func", "task-fa_run-01_bold"), stem % ("dwi", "dir-PA_dwi")
    maps = [stem % ("fmap", s) for s in ("magnitude1", "magnitude2", "phasediff")]
    expected = {f"{b}.{x}" for b in (bold, *maps) for x in ("nii.gz", "json")}
    expected |= {f"{dwi}.{x}" for x in ("nii.gz", "json", "bval", "bvec")}
    expected |= {f"{ses}/sub-001_ses-01_scans.tsv"}
    expected |= {"dataset_description.json", "README", "participants.tsv"}
    assert files(root) == expected

    # Links to the converter's files, not copies.
    outputs = {(s.st_dev, s.st_ino) for s in map(os.stat, filed.archive.rglob("nifti/*.nii.gz"))}
    linked = [root / f"{b}.nii.gz" for b in (bold, dwi, *maps)]
    assert {(s.st_dev, s.st_ino) for s in map(os.stat, linked)} <= outputs

    assert sidecar(root, f"{bold}.json")["TaskName"] == "fa"
    phasediff = sidecar(root, f"{maps[2]}.json")
    assert (phasediff["EchoTime1"], phasediff["EchoTime2"]) == (0.01, 0.01246)
    for fmap in maps:
        described = sidecar(root, f"{fmap}.json")
        assert described["IntendedFor"] == [
            "ses-01/func/sub-001_ses-01_task-fa_run-01_bold.nii.gz",
            "ses-01/dwi/sub-001_ses-01_dir-PA_dwi.nii.gz",
        ]
        assert described["B0FieldIdentifier"] == sidecar(root, f"{bold}.json")["B0FieldSource"]
    scans = (root / ses / "sub-001_ses-01_scans.tsv").read_text().splitlines()
    assert scans[0] == "filename\tacq_time"
    assert len(scans) == 6 and not any("2022-07-11" in row for row in scans), "dates shifted"
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-001\n"
    everything = " ".join((root / f).read_text() for f in expected if not f.endswith(".gz"))
    for secret in ("P-4711", "Doe", "Jane", study, "StudyInstanceUID", "SeriesInstanceUID"):
        assert secret not in everything, secret
    assert_valid(root)


def test_the_patients_next_study_is_their_next_session(filed: FiledSessions) -> None:
    views = filed.views(dates="remove")
    first = filed.file(XA30_T1W, PatientID="P-1")
    other = filed.file(*XA30_SESSION, PatientID="P-2")
    again = filed.file(
        XA30_T1W, PatientID="P-1", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid()
    )
    places = [views.refresh(uid) for uid in (first, other, again)]
    labels = [(p.subject, p.session) if p else None for p in places]
    assert labels == [("001", "01"), ("002", "01"), ("001", "02")]
    assert views.refresh(again) == places[2], "labels are kept"
    root = dataset_root(filed.archive, None, LAB)
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-001\nsub-002\n"
    t1w = root / "sub-001/ses-02/anat/sub-001_ses-02_acq-tfl_T1w.json"
    assert "AcquisitionTime" not in sidecar(t1w.parent, t1w.name)
    scans = (root / "sub-001/ses-02/sub-001_ses-02_scans.tsv").read_text()
    assert scans == "filename\nanat/sub-001_ses-02_acq-tfl_T1w.nii.gz\n", "no acq_time"
    assert_valid(root)


@pytest.mark.parametrize("elsewhere", [False, True], ids=["in-archive", "bids-dir"])
def test_an_evicted_study_leaves_and_the_dataset_stays_valid(
    filed: FiledSessions, tmp_path: Path, elsewhere: bool
) -> None:
    bids_dir = tmp_path / "bids" if elsewhere else None
    views = filed.views(bids_dir=bids_dir)
    kept = filed.file(XA30_T1W, PatientID="P-1")
    gone = filed.file(*XA30_SESSION, PatientID="P-2")
    for uid in (kept, gone):
        views.refresh(uid)
    root = dataset_root(filed.archive, bids_dir, LAB)
    linked = list((root / "sub-002").rglob("*.nii.gz"))
    assert linked and all(os.stat(p).st_nlink == 2 for p in linked)  # the archive's and ours

    sessions, archive = filed.sorter.sessions, filed.archive
    eviction.finish(sessions, archive, claim_eviction(filed, gone), bids_dir=bids_dir)
    # With the eviction itself, not on its event later: the links would keep the space taken,
    # and retention, finding the space still short, would evict more.
    assert not (root / "sub-002").exists()
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-001\n"
    [event] = eviction.unannounced(sessions)
    views.remove(event.study_instance_uid)  # the converter's, on study.evicted: nothing left
    assert sorted(p.name for p in root.glob("sub-*")) == ["sub-001"]
    assert_valid(root)


def claim_eviction(filed: FiledSessions, study_uid: str) -> int:
    """The study marked evicting, as retention does first; the eviction's id."""
    with filed.sorter.sessions() as session:
        [candidate] = [
            c for c in candidates(session, datetime.now(UTC), 60) if c.study_uid == study_uid
        ]
    evicting = eviction.claim(filed.sorter.sessions, candidate, "space", 60)
    assert evicting is not None
    return evicting


class Retention(threading.Thread):
    """Retention evicting a study, as another process does: it claims the study and moves its
    folder out, then waits for the lab's dataset (`dataset.locked`) to remove its session."""

    def __init__(self, filed: FiledSessions, study_uid: str) -> None:
        super().__init__()
        self.filed, self.study_uid = filed, study_uid
        with filed.sorter.sessions() as session:
            study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid))
            row = study.one()
            self.folder = filed.archive / row.physician_folder / row.folder
        self.eviction_id = claim_eviction(filed, study_uid)

    def run(self) -> None:
        eviction.remove_files(self.filed.sorter.sessions, self.filed.archive, self.eviction_id)

    def moved_out(self) -> None:
        """Started, and on until the study's folder is gone from the archive."""
        self.start()
        wait_for(lambda: not self.folder.exists(), 30, "the study's folder moved out")

    def finish(self) -> None:
        self.join(30)
        assert not self.is_alive()
        eviction.close(self.filed.sorter.sessions, self.eviction_id)


def test_a_study_evicted_after_its_rows_were_read_leaves_all_the_same(
    filed: FiledSessions,
) -> None:
    kept = filed.file(XA30_T1W, PatientID="P-1")
    gone = filed.file(*XA30_SESSION, PatientID="P-2")
    assert filed.views().refresh(kept) is not None
    retention: list[Retention] = []

    class EvictedMeanwhile(BidsViews):
        """The study's files go after the views read its catalog rows."""

        def _rules(self, root: Path, lab: str) -> Rules:
            if not retention:
                retention.append(Retention(filed, gone))
                retention[0].moved_out()
            return super()._rules(root, lab)

    spot = EvictedMeanwhile(filed.sorter.sessions, filed.archive, None, "shift").refresh(gone)
    assert spot is not None  # every series left over: its files do not read
    retention[0].finish()
    root = dataset_root(filed.archive, None, LAB)
    assert not spot.folder.exists() and not spot.leftovers.exists()
    assert sorted(p.name for p in root.glob("sub-*")) == ["sub-001"]
    assert (root / "participants.tsv").read_text() == "participant_id\nsub-001\n"
    assert_valid(root)


def test_a_file_gone_while_it_is_linked_has_the_catalog_read_again(
    filed: FiledSessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race itself, made certain: the study evicted between the plan and the links."""
    study = filed.file(XA30_T1W)
    retention: list[Retention] = []

    def evicted_meanwhile(source: Path, target: Path) -> None:
        if not retention:
            retention.append(Retention(filed, study))
            retention[0].moved_out()
        link(source, target)

    link = dataset._link
    monkeypatch.setattr(dataset, "_link", evicted_meanwhile)
    assert filed.views().refresh(study) is None  # read again: being evicted, left to that
    retention[0].finish()
    filed.views().remove(study)  # the converter's, on study.evicted
    root = dataset_root(filed.archive, None, LAB)
    assert files(root) == {"dataset_description.json", "README", "participants.tsv"}
    assert (root / "participants.tsv").read_text() == "participant_id\n"


def test_a_leftovers_reason_gives_no_archive_path(filed: FiledSessions) -> None:
    """A failed conversion's reason is an exception's message: it may name a file in the
    study's folder, which is named after the patient."""
    study = filed.file(*XA30_SESSION, PatientID="P-4711", PatientName="Doe^Jane")
    with filed.sorter.sessions.begin() as session:
        series = session.scalars(
            select(Series).join(Study).where(Study.study_instance_uid == study)
        ).first()
        assert series is not None
        folder = filed.archive / series.study.physician_folder / series.study.folder
        series.conversion = ConversionState.FAILED
        series.conversion_reason = f"OSError: [Errno 28] No space left: '{folder}/nifti/x.nii'"
    spot = filed.views().refresh(study)
    assert spot is not None
    report = spot.leftovers.read_text()
    assert "failed: OSError: [Errno 28] No space left: '<a file>'" in report, report
    for secret in ("P-4711", "Doe", str(filed.archive)):
        assert secret not in report, secret


def test_a_series_converted_again_is_linked_again(filed: FiledSessions) -> None:
    views = filed.views()
    study = filed.file(XA30_T1W)
    views.refresh(study)
    root = dataset_root(filed.archive, None, LAB)
    [t1w] = root.glob("sub-001/ses-01/anat/*_T1w.nii.gz")
    before = os.stat(t1w).st_ino
    filed.convert(study)  # each output replaced: a new file
    [output] = filed.archive.rglob("nifti/*.nii.gz")
    assert os.stat(output).st_ino != before
    views.refresh(study)
    assert os.path.samestat(os.stat(t1w), os.stat(output))
    assert_valid(root)


def test_a_renamed_series_is_classified_and_a_rule_wins(filed: FiledSessions) -> None:
    views = filed.views()
    study = filed.file(XA30_T1W, ProtocolName="mprage_renamed", SeriesDescription="mprage_renamed")
    views.refresh(study)
    root = dataset_root(filed.archive, None, LAB)
    assert [p.name for p in root.glob("sub-001/ses-01/anat/*.nii.gz")] == [
        "sub-001_ses-01_T1w.nii.gz"
    ]
    rules = {
        "descriptions": [
            {
                "datatype": "anat",
                "suffix": "T1w",
                "criteria": {"SeriesDescription": "mprage_*"},
                "custom_entities": "acq-lab",
            }
        ]
    }
    (root / RULES_FILE).parent.mkdir(parents=True)
    (root / RULES_FILE).write_text(json.dumps(rules))
    assert views.refresh_lab(LAB) == 1
    assert sorted(p.name for p in root.glob("sub-001/ses-01/anat/*")) == sorted(
        ["sub-001_ses-01_acq-lab_T1w.json", "sub-001_ses-01_acq-lab_T1w.nii.gz"]
    )
    assert_valid(root)

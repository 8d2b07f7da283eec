"""The re-send that lost a good slice, sent again to ``dcmdb up``: a GE fMRI series by
storescu, then one slice without its pixel data, the same slice as it was, and a correction
of another slice, on SQLite and PostgreSQL. The sender of the copy without pixels gets a
warning saying why, the good slice stays, and only the correction converts the series again,
still to 64 x 64 x 10 slices x 5 volumes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import nibabel as nib
import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, selectinload

from shared.catalog.models import Instance, InstanceHistory, Series
from shared.catalog.states import Completion, ConversionState
from shared.headers import meta_places
from tests import copies
from tests.support import SLOW_POLL, wait_for
from tests.system import (
    Dcmdb,
    catalog,
    dicom_files,
    everything,
    migrated,
    send_dicom,
    send_raw_answer,
    storescu,
)

pytestmark = pytest.mark.e2e

ELEMENTS_DISCARDED = 0xB006
ADMIN = "overwrite-test-admin-key"


@pytest.fixture
def system(tmp_path: Path, broker_url: str, catalog_url: str) -> Iterator[Dcmdb]:
    with everything(
        tmp_path, broker_url, catalog_url, DCMDB_STABLE_AGE="2", DCMDB_API_KEYS=f"{ADMIN}:admin"
    ) as dcmdb:
        yield dcmdb


def the_series(url: str) -> Series | None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        if not migrated(engine):
            return None
        with Session(engine) as session:
            rows = session.scalars(select(Series).options(selectinload(Series.outputs))).all()
            return rows[0] if len(rows) == 1 else None
    finally:
        engine.dispose()


def rows(url: str, model: type[InstanceHistory] | type[Instance]) -> list:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with Session(engine) as session:
            return list(session.scalars(select(model)))
    finally:
        engine.dispose()


def received_at(url: str, sop_instance_uid: str) -> datetime:
    (row,) = [i for i in rows(url, Instance) if i.sop_instance_uid == sop_instance_uid]
    return row.received_at


def converted(url: str, after: int = 0) -> int | None:
    """The series' generation once all 50 slices are filed and that generation, later than
    ``after``, is converted."""
    series = the_series(url)
    if (
        series is not None
        and series.instance_count == 50
        and series.generation > after
        and series.completion == Completion.COMPLETE
        and series.conversion == ConversionState.CONVERTED
        and series.converted_generation == series.generation
    ):
        return series.generation
    return None


def data_set(path: Path) -> bytes:
    """A file's data set, without the file meta information the receiver writes anew."""
    content = path.read_bytes()
    return content[meta_places(content)[1] :]


def volume_shape(system: Dcmdb) -> tuple[int, ...]:
    series = the_series(system.database_url)
    assert series is not None
    (output,) = series.outputs
    return tuple(nib.load(system.data_dir / "archive" / output.path).shape)


def test_a_resend_without_pixels_is_refused_with_a_warning_and_the_series_stays_whole(
    system: Dcmdb, testdata: Path, tmp_path: Path
) -> None:
    slices = dicom_files(testdata / copies.GE_FMRI)
    send_dicom(system.port, slices)
    generation = wait_for(lambda: converted(system.database_url), 120, "the series converted",
                          SLOW_POLL)  # fmt: skip
    assert volume_shape(system) == (64, 64, 10, 5)
    archive = system.data_dir / "archive"
    uid, fixed_uid = (str(dcmread(s, stop_before_pixels=True).SOPInstanceUID) for s in slices[:2])
    (filed,) = archive.rglob(f"{uid}.dcm")
    (to_fix,) = archive.rglob(f"{fixed_uid}.dcm")
    good, before_fix = data_set(filed), data_set(to_fix)  # as storescu encoded them
    first_received = received_at(system.database_url, uid)

    worse = copies.written(tmp_path / "resend", "worse.dcm", copies.without_pixels(slices[0]))
    answer = send_raw_answer(system.port, worse, calling_ae="RESENDER")
    assert answer.Status == ELEMENTS_DISCARDED
    assert answer.ErrorComment == "not filed: no pixel data, where the filed copy has it"
    by_storescu = storescu(system.port, [worse], extra=["-v"])
    assert by_storescu.returncode == 0
    assert "Warning: ElementsDiscarded" in by_storescu.stderr, by_storescu.stderr
    notes = [json.loads(p.read_text()) for p in (system.data_dir / "quarantine").glob("*.json")]
    assert len(notes) == 2 and all("no pixel data" in n["reason"] for n in notes)
    assert {n["calling_ae"] for n in notes} == {"RESENDER", "STORESCU"}

    send_dicom(system.port, [slices[0]])  # the same slice again: answered 0x0000, no change
    correction = copies.written(tmp_path / "resend", "fixed.dcm", copies.corrected(slices[1]))
    send_dicom(system.port, [correction])
    again = wait_for(lambda: converted(system.database_url, generation), 120,
                     "the correction converted", SLOW_POLL)  # fmt: skip

    assert again == generation + 1
    assert data_set(filed) == good, "the good slice was replaced"
    assert received_at(system.database_url, uid) == first_received, "the same slice refiled"
    assert volume_shape(system) == (64, 64, 10, 5)
    (row,) = rows(system.database_url, InstanceHistory)
    kept = system.data_dir / "history" / row.kept_path
    assert data_set(kept) == before_fix
    assert row.new_size == to_fix.stat().st_size and row.new_calling_ae == "STORESCU"
    assert b"corrected" in to_fix.read_bytes()

    # The study's details list the replacement.
    system.wait_until_api_answers()
    study_uid = str(dcmread(slices[0], stop_before_pixels=True).StudyInstanceUID)
    web = httpx.Client(base_url=f"http://127.0.0.1:{system.api_port}", timeout=30)
    details = web.get(f"/studies/{study_uid}", headers={"Authorization": f"Bearer {ADMIN}"})
    details = details.json()
    (replaced,) = details["replaced"]
    assert replaced["sop_instance_uid"] == fixed_uid and replaced["kept_path"] == row.kept_path
    assert (replaced["old_calling_ae"], replaced["new_calling_ae"]) == ("STORESCU", "STORESCU")
    assert replaced["old_size_bytes"] == row.old_size and replaced["reason"] == row.reason
    token = csrf_token(web.get("/signin").text)
    assert web.post("/signin", data={"csrf_token": token, "key": ADMIN}).status_code == 303
    page = web.get(f"/web/studies/{study_uid}")
    assert page.status_code == 200 and "Replaced copies" in page.text
    assert fixed_uid in page.text and row.reason in page.text


def csrf_token(page: str) -> str:
    marker = 'name="csrf_token" value="'
    return page.split(marker, 1)[1].split('"', 1)[0]


@pytest.mark.parametrize("policy", ["never", "always"])
def test_the_policy_reaches_the_receiver_and_the_sorter(
    tmp_path: Path, broker_url: str, catalog_url: str, testdata: Path, policy: str
) -> None:
    """``never``: a correction is answered 0xB006 and kept aside; ``always``: even a copy
    without pixels is answered 0x0000 and replaces the filed one, which goes to history/."""
    source = dicom_files(testdata / copies.GE_FMRI)[0]
    uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    derive = copies.corrected if policy == "never" else copies.without_pixels
    resent = copies.written(tmp_path / "resend", "copy.dcm", derive(source))
    with everything(tmp_path, broker_url, catalog_url, DCMDB_OVERWRITE=policy) as system:
        send_dicom(system.port, [source])
        wait_for(lambda: uid in {i.sop_instance_uid for i in catalog(catalog_url)[1]}, 60,
                 "the slice filed", SLOW_POLL)  # fmt: skip
        (filed,) = (system.data_dir / "archive").rglob(f"{uid}.dcm")
        first = data_set(filed)

        answer = send_raw_answer(system.port, resent, calling_ae="RESENDER")

        if policy == "never":
            assert answer.Status == ELEMENTS_DISCARDED
            assert "DCMDB_OVERWRITE=never" in answer.ErrorComment
            (kept,) = (system.data_dir / "quarantine").glob("*.dcm")
            assert data_set(kept) == data_set(resent) and data_set(filed) == first
        else:
            assert answer.Status == 0x0000
            (row,) = wait_for(lambda: rows(catalog_url, InstanceHistory), 60, "the replacement",
                              SLOW_POLL)  # fmt: skip
            assert row.new_calling_ae == "RESENDER" and "always" in row.reason
            assert data_set(system.data_dir / "history" / row.kept_path) == first
            assert data_set(filed) == data_set(resent)

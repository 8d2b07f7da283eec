"""Converting again: an upgraded converter brings a catalog of old outputs up to date, once;
``dcmdb reconvert`` does it on an admin's request (real SQLite and PostgreSQL catalogs)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.converter import records
from services.converter.conversion import Conversion, Output
from services.converter.engines import run_dicom2nifti
from services.converter.instances import read_instances
from services.sorter.completion import unannounced
from shared.catalog.models import NiftiOutput, Series, Study
from shared.catalog.states import ConversionState
from shared.messages import SeriesCompleted
from shared.reconversion import CONVERSION_POLICY, Selection, bring_up_to_date, reconvert
from tests.arrivals import Sorter
from tests.filed_studies import Archive
from tests.reference import difference, load, series_in
from tests.support import SLOW_POLL, wait_for
from tests.system import Dcmdb, dicom_files, send_dicom

pytestmark = pytest.mark.integration
DCMDB = Path(sys.executable).with_name("dcmdb")


@pytest.fixture
def archive(sorter: Sorter, testdata: Path, catalog_url: str) -> Archive:
    return Archive(sorter, testdata, catalog_url)


def _series(archive: Archive, study_uid: str) -> Series:
    with archive.sessions() as session:
        found = session.scalar(
            select(Series).join(Study).where(Study.study_instance_uid == study_uid)
        )
        assert found is not None
        session.expunge(found)
        return found


def _set(archive: Archive, study_uid: str, **values: object) -> None:
    pk = _series(archive, study_uid).id
    with archive.sessions.begin() as session:
        session.execute(update(Series).where(Series.id == pk).values(**values))


def _announced(archive: Archive) -> None:
    """As a catalog an older dcmdb left: every completion published long ago."""
    with archive.sessions.begin() as session:
        session.execute(update(Series).values(completion_announced=True))


def test_an_upgrade_converts_again_what_the_old_policy_got_wrong_once(archive: Archive) -> None:
    mr = archive.study()  # an MR series converted by the old policy
    ct = archive.study(Modality="CT")
    failed = archive.study(Modality="CT")
    skipped = archive.study()
    _set(archive, failed, conversion=ConversionState.FAILED, conversion_reason="dicom2nifti: ...")
    _set(archive, skipped, conversion=ConversionState.SKIPPED, conversion_reason="localizer")
    _announced(archive)
    assert unannounced(archive.sessions) == []

    queued = bring_up_to_date(archive.sessions)

    assert sorted(q.study_uid for q in queued) == sorted([mr, failed])
    for uid in (mr, failed):
        series = _series(archive, uid)
        assert (series.conversion, series.completion_announced) == (ConversionState.PENDING, False)
    # The sorter's outbox announces their completions again, for the same generation.
    again = unannounced(archive.sessions)
    assert sorted(e.study_instance_uid for e in again) == sorted([mr, failed])
    assert {e.generation for e in again} == {1}
    for uid, state in ((ct, ConversionState.CONVERTED), (skipped, ConversionState.SKIPPED)):
        series = _series(archive, uid)
        assert (series.conversion, series.conversion_policy) == (state, CONVERSION_POLICY)

    assert bring_up_to_date(archive.sessions) == []  # a second start: nothing

    # The converter converts them, and records the policy it converted by.
    for event in again:
        job = records.job_for(archive.sessions, archive.sorter.archive, event)
        assert job is not None, "a pending conversion is converted again"
        output = _output(archive, event)
        assert records.record(
            archive.sessions, archive.sorter.archive, event, Conversion("converted", (output,))
        )
    assert all(_series(archive, uid).conversion_policy == CONVERSION_POLICY for uid in (mr, ct))
    assert bring_up_to_date(archive.sessions) == []


def _output(archive: Archive, event: SeriesCompleted) -> Output:
    """The files a conversion of the series leaves (a diffusion volume: with gradients)."""
    with archive.sessions() as session:
        series = session.scalar(
            select(Series).where(Series.series_instance_uid == event.series_instance_uid)
        )
        assert series is not None
        base = archive.sorter.archive / series.study.relative_folder / "nifti" / series.folder
    paths = [base.with_name(f"{base.name}{suffix}") for suffix in (".nii.gz", ".json", ".bval",
                                                                     ".bvec")]  # fmt: skip
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"0\n")
    return Output(paths[0], paths[1], "dcm2niix v1", paths[2], paths[3])


def test_reconvert_selects_by_study_series_physician_and_date(archive: Archive) -> None:
    a = archive.study(ReferringPhysicianName="SMITH^JOHN", StudyDate="20240105")
    b = archive.study(ReferringPhysicianName="SMITH^JOHN", StudyDate="20240301")
    c = archive.study(ReferringPhysicianName="DOE^JANE", StudyDate="20240105")
    _announced(archive)

    def chosen(selection: Selection) -> list[str]:
        return sorted(q.study_uid for q in reconvert(archive.sessions, selection, dry_run=True))

    assert chosen(Selection(physician_folder="SMITH_JOHN")) == sorted([a, b])
    assert chosen(Selection(first_date="20240101", last_date="20240131")) == sorted([a, c])
    assert chosen(Selection(physician_folder="SMITH_JOHN", last_date="20240131")) == [a]
    assert chosen(Selection(study_uid=c)) == [c]
    assert chosen(Selection(series_uid=_series(archive, b).series_instance_uid)) == [b]
    assert unannounced(archive.sessions) == []  # a dry run changes nothing

    queued = reconvert(archive.sessions, Selection(physician_folder="DOE_JANE"))
    assert [q.study_uid for q in queued] == [c]
    assert _series(archive, c).conversion == ConversionState.PENDING
    assert [e.study_instance_uid for e in unannounced(archive.sessions)] == [c]
    # Pending already: not queued twice.
    assert reconvert(archive.sessions, Selection(physician_folder="DOE_JANE")) == []


def _command(archive: Archive, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DCMDB_DATABASE_URL": archive.url,
                   "DCMDB_DATA_DIR": str(archive.sorter.data)}  # fmt: skip
    return subprocess.run(
        [str(DCMDB), "reconvert", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_dcmdb_reconvert(archive: Archive) -> None:
    study = archive.study(ReferringPhysicianName="SMITH^JOHN", StudyDate="20240105")
    _announced(archive)

    dry = _command(archive, "--physician", "SMITH_JOHN", "--date", "20240101-20240131", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would convert again: SMITH_JOHN/" in dry.stdout
    assert "1 series would convert again" in dry.stderr
    assert _series(archive, study).conversion == ConversionState.CONVERTED

    done = _command(archive, "--study", study)
    assert done.returncode == 0, done.stderr
    assert "queued: SMITH_JOHN/" in done.stdout
    assert _series(archive, study).conversion == ConversionState.PENDING

    for args, message in (
        ((), "name what to convert again"),
        (("--date", "2024-01-01"), "--date: "),
    ):
        refused = _command(archive, *args)
        assert refused.returncode == 2
        assert message in refused.stderr


def test_downloads_carry_the_gradient_table(archive: Archive) -> None:
    """A diffusion volume's .bval/.bvec come with its NIfTI download and the study archive."""
    study = archive.study()
    series = _series(archive, study)
    event = SeriesCompleted(
        study_instance_uid=study,
        series_instance_uid=series.series_instance_uid,
        generation=series.generation,
        instances=series.instance_count,
        reason="stable",
    )
    output = _output(archive, event)
    assert records.record(
        archive.sessions, archive.sorter.archive, event, Conversion("converted", (output,))
    )
    key = "reconversion-read-key-0123456789"
    settings = ApiSettings(
        data_dir=archive.sorter.data,
        database_url=archive.url,
        api_keys=f"{key}:read",  # type: ignore[arg-type]
    )
    headers = {"Authorization": f"Bearer {key}"}
    names = {p.name for p in (output.nifti, output.bval, output.bvec) if p}
    with TestClient(create_app(settings)) as api:
        listed = api.get(f"/series/{series.series_instance_uid}", headers=headers).json()
        (described,) = listed["nifti"]["outputs"]
        assert described["bval_path"].endswith(".bval")
        assert described["bvec_path"].endswith(".bvec")
        nifti = api.get(f"/series/{series.series_instance_uid}/nifti", headers=headers)
        assert nifti.status_code == 200
        assert nifti.headers["content-type"].startswith("application/zip")
        with zipfile.ZipFile(io.BytesIO(nifti.content)) as zipped:
            assert {Path(n).name for n in zipped.namelist()} == names
        whole = api.get(f"/studies/{study}/archive?format=nifti", headers=headers)
        with zipfile.ZipFile(io.BytesIO(whole.content)) as zipped:
            assert names | {output.sidecar.name} == {Path(n).name for n in zipped.namelist()}


@pytest.mark.e2e
@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_an_upgraded_dcmdb_replaces_old_outputs_once(
    tmp_path: Path, broker_url: str, catalog_url: str, testdata: Path
) -> None:
    """A catalog as the previous version left it (the coronal mosaic mirrored by dicom2nifti,
    no policy recorded): the upgraded converter converts it again at start, replacing the
    file, and a second start converts nothing."""
    folder = testdata / "siemens_vb17_mosaic_cordesc35" / "dicom"
    dcmdb = Dcmdb(tmp_path / "data", broker_url, catalog_url, extra_env={"DCMDB_STABLE_AGE": "2"})
    archive = dcmdb.data_dir / "archive"
    try:
        dcmdb.start("up")
        dcmdb.wait_until_listening()
        send_dicom(dcmdb.port, dicom_files(folder))
        wait_for(lambda: _outputs(catalog_url), 300, "the mosaic converted", SLOW_POLL)
        (path, engine), *_ = _outputs(catalog_url)
        good = (archive / path).read_bytes()
        dcmdb.stop()

        (series,) = series_in(folder)
        old = run_dicom2nifti(read_instances(series.files)[0], tmp_path / "old")
        mirrored = tmp_path / "mirrored.nii.gz"
        nib.save(nib.load(old.nifti), mirrored)
        (archive / path).write_bytes(mirrored.read_bytes())
        _as_left_by_the_old_version(catalog_url, "dicom2nifti 2.6.2")

        dcmdb.start("up", name="upgraded")
        wait_for(lambda: _outputs(catalog_url) == [(path, engine)], 300, "converted again")
        assert difference(load(archive / path), load(mirrored)) is not None
        assert (archive / path).read_bytes() == good
        assert "converting 1 series again" in dcmdb.log("upgraded")
        stamp = (archive / path).stat().st_mtime_ns
        dcmdb.stop()

        dcmdb.start("up", name="again")
        wait_for(lambda: _ready(dcmdb, "converter"), 120, "the converter ready")
        dcmdb.wait_until_listening()
        assert "again" not in dcmdb.log("again").replace("dcmdb up", "")
        assert (archive / path).stat().st_mtime_ns == stamp
        assert _outputs(catalog_url) == [(path, engine)]
    finally:
        dcmdb.stop()


def _ready(dcmdb: Dcmdb, service: str) -> bool:
    try:
        with urllib.request.urlopen(dcmdb.side_url(service, "/readyz"), timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _outputs(url: str) -> list[tuple[str, str]]:
    """(path, engine) of each output of converted series made by the current policy."""
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(NiftiOutput.path, NiftiOutput.engine)
                .join(Series)
                .where(
                    Series.conversion == ConversionState.CONVERTED,
                    Series.conversion_policy == CONVERSION_POLICY,
                )
            )
            return [(p, e) for p, e in rows]
    except OperationalError:
        return []  # not migrated yet
    finally:
        engine.dispose()


def _as_left_by_the_old_version(url: str, engine_name: str) -> None:
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            session.execute(update(Series).values(conversion_policy=None))
            session.execute(update(NiftiOutput).values(engine=engine_name))
    finally:
        engine.dispose()

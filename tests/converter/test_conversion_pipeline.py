"""The whole pipeline to NIfTI: ``dcmdb up``, the test data sent with storescu, every
series completed and converted as ``dcm2niix -i y`` converts it, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, selectinload

from shared.catalog.models import Series
from shared.catalog.states import Completion, ConversionState
from tests.reference import dcm2niix_reference, difference, load
from tests.support import SLOW_POLL, wait_for
from tests.system import Dcmdb, dicom_files, migrated, send_dicom

pytestmark = pytest.mark.e2e


@pytest.fixture
def system(tmp_path: Path, broker_url: str, catalog_url: str) -> Iterator[Dcmdb]:
    dcmdb = Dcmdb(tmp_path / "data", broker_url, catalog_url, extra_env={"DCMDB_STABLE_AGE": "2"})
    dcmdb.start("up")
    dcmdb.wait_until_listening()
    yield dcmdb
    dcmdb.stop()


def catalog_series(url: str) -> list[Series]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        if not migrated(engine):
            return []
        with Session(engine) as session:
            query = select(Series).options(
                selectinload(Series.instances), selectinload(Series.outputs)
            )
            return list(session.scalars(query))
    finally:
        engine.dispose()


def all_converted(url: str, expected: int) -> bool:
    rows = catalog_series(url)
    done = [
        s
        for s in rows
        if s.completion == Completion.COMPLETE and s.conversion != ConversionState.PENDING
    ]
    return len(rows) >= expected and len(done) == len(rows)


def test_every_series_is_converted_as_dcm2niix_converts_it(
    system: Dcmdb, testdata: Path, tmp_path: Path
) -> None:
    send_dicom(system.port, dicom_files(testdata))
    archive = system.data_dir / "archive"
    wait_for(
        lambda: all_converted(system.database_url, 20), 600, "every series converted", SLOW_POLL
    )
    problems = []
    outcomes = set()
    for index, series in enumerate(catalog_series(system.database_url)):
        # The reference converts exactly the files the archive holds for this series.
        source = tmp_path / "reference" / f"{index:03d}" / "dicom"
        source.mkdir(parents=True)
        for instance in series.instances:
            (source / Path(instance.path).name).symlink_to(archive / instance.path)
        reference = dcm2niix_reference(source, source.parent / "nifti")
        outcomes.add(series.conversion)
        name = f"{series.folder} ({series.conversion}: {series.conversion_reason})"
        if not reference:
            if series.conversion != "skipped" or not series.conversion_reason:
                problems.append(f"{name}: dcm2niix -i y skips it")
            continue
        if series.modality == "RTDOSE":
            # dcm2niix spaces the dose planes 1 mm apart where GridFrameOffsetVector says
            # 5 mm: the geometry guard fails it, visibly (see tests/converter/test_conversion.py).
            if series.conversion != "failed" or "disagrees with the DICOM headers" not in (
                series.conversion_reason
            ):
                problems.append(f"{name}: dcm2niix is wrong here and the guard says so")
            continue
        if series.conversion != "converted":
            problems.append(f"{name}: dcm2niix -i y converts it")
            continue
        ours = [load(archive / output.path) for output in series.outputs]
        unmatched = list(range(len(ours)))
        for volume in reference:
            # Pair each reference volume with one of ours (several can be equal: the same
            # image saved in several transfer syntaxes under several series numbers).
            match = next(
                (
                    i
                    for i in unmatched
                    if any(difference(ours[i], load(f)) is None for f in volume.files)
                ),
                None,
            )
            if match is None:
                problems.append(f"{name}: none of our volumes matches {volume.name}")
            else:
                unmatched.remove(match)
        if unmatched:
            extra = [ours[i].path.name for i in unmatched]
            problems.append(f"{name}: volumes dcm2niix does not write: {extra}")
        for output in series.outputs:
            assert (archive / output.sidecar_path).is_file()
            assert output.engine.startswith(("dicom2nifti", "dcm2niix"))
    assert not problems, "\n".join(problems)
    assert {"converted", "skipped"} <= outcomes

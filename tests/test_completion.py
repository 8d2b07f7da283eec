"""Series completion: once per generation, reopened by late instances, kept across restarts."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from services.sorter.completion import complete_stable_series, mark_announced, unannounced
from shared.catalog.database import open_catalog
from shared.catalog.models import COMPLETE, RECEIVING, ExpectedSeries, Series
from tests.arrivals import Sorter, arrive, dicom_files

pytestmark = pytest.mark.integration

LATER = datetime.now(UTC) + timedelta(hours=1)  # every series is stable by then


def series_rows(sorter: Sorter) -> dict[str, Series]:
    with sorter.sessions() as session:
        return {s.series_instance_uid: s for s in session.scalars(select(Series))}


def file_folder(sorter: Sorter, testdata: Path, folder: str, count: int | None = None) -> None:
    files = dicom_files(testdata, folder)[:count]
    sorter.filer.file_batch([arrive(path, sorter.data) for path in files])


def test_a_quiet_series_completes_once_and_is_announced_once(
    sorter: Sorter, testdata: Path
) -> None:
    file_folder(sorter, testdata, "ge_fmri_epi_4d")
    assert complete_stable_series(sorter.sessions, stable_age=3600) == 0  # still arriving
    assert complete_stable_series(sorter.sessions, stable_age=60, now=LATER) == 1
    assert complete_stable_series(sorter.sessions, stable_age=60, now=LATER) == 0
    [event] = unannounced(sorter.sessions)
    assert (event.generation, event.instances, event.reason) == (1, 50, "stable")
    # Not confirmed yet: a restart (new sessions) still finds it to announce.
    engine, sessions = open_catalog(str(sorter.sessions.kw["bind"].url), writer=True)
    assert [e.series_instance_uid for e in unannounced(sessions)] == [event.series_instance_uid]
    engine.dispose()
    mark_announced(sorter.sessions, event)
    assert unannounced(sorter.sessions) == []


def test_a_late_instance_reopens_a_complete_series_as_a_new_generation(
    sorter: Sorter, testdata: Path
) -> None:
    files = dicom_files(testdata, "ge_fmri_epi_4d")
    sorter.filer.file_batch([arrive(path, sorter.data) for path in files[:40]])
    complete_stable_series(sorter.sessions, stable_age=60, now=LATER)
    [first] = unannounced(sorter.sessions)
    mark_announced(sorter.sessions, first)

    sorter.filer.file_batch([arrive(path, sorter.data) for path in files[40:]])
    [series] = series_rows(sorter).values()
    assert (series.completion, series.generation, series.conversion) == (RECEIVING, 2, "pending")
    assert unannounced(sorter.sessions) == []
    complete_stable_series(sorter.sessions, stable_age=60, now=LATER)
    [second] = unannounced(sorter.sessions)
    assert (second.generation, second.instances) == (2, 50)
    # The old generation's confirmation arriving late changes nothing.
    mark_announced(sorter.sessions, first)
    [still] = unannounced(sorter.sessions)
    assert (still.series_instance_uid, still.generation) == (second.series_instance_uid, 2)


def _complete_in_process(url: str, barrier: object, results: object) -> None:
    engine, sessions = open_catalog(url, writer=True)
    barrier.wait()  # type: ignore[attr-defined]
    results.put(complete_stable_series(sessions, 60, LATER))  # type: ignore[attr-defined]
    engine.dispose()


def test_sorters_completing_at_once_complete_each_series_exactly_once(
    sorter: Sorter, testdata: Path, catalog_url: str
) -> None:
    for folder in ("ge_fmri_epi_4d", "siemens_xa30_t1w_3d_classic", "d2n_hitachi_mr"):
        file_folder(sorter, testdata, folder)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [
        context.Process(target=_complete_in_process, args=(catalog_url, barrier, results))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    counts = [results.get(timeout=5) for _ in workers]
    assert sum(counts) == 3, counts  # each series completed by exactly one of them
    rows = series_rows(sorter)
    assert len(rows) == 3 and all(s.completion == COMPLETE for s in rows.values())
    assert len(unannounced(sorter.sessions)) == 3


def test_a_retrieved_series_completes_when_all_its_expected_instances_are_filed(
    sorter: Sorter, testdata: Path
) -> None:
    files = dicom_files(testdata, "ge_fmri_epi_4d")
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with sorter.sessions.begin() as session:
        session.add(
            ExpectedSeries(
                series_instance_uid=series_uid,
                study_instance_uid=study_uid,
                expected_instances=len(files),
            )
        )
    sorter.filer.file_batch([arrive(path, sorter.data) for path in files[:-1]])
    assert complete_stable_series(sorter.sessions, stable_age=3600) == 0  # one still missing
    sorter.filer.file_batch([arrive(path, sorter.data) for path in files[-1:]])
    assert complete_stable_series(sorter.sessions, stable_age=3600) == 1  # no waiting
    [event] = unannounced(sorter.sessions)
    assert (event.instances, event.reason) == (len(files), "expected count reached")
    # Another series of the same batch, without expectations, waits for the stable age.
    file_folder(sorter, testdata, "d2n_hitachi_mr")
    assert complete_stable_series(sorter.sessions, stable_age=3600) == 0

"""Series completion: once per generation, reopened by late instances, kept across restarts."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from services.sorter.completion import announce_next, complete_stable_series, unannounced
from shared.catalog.database import open_catalog
from shared.catalog.models import ExpectedSeries, Series
from shared.catalog.states import Completion
from shared.messages import SeriesCompleted
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
    # The broker did not confirm: a restart (new sessions) still finds it to announce.
    with pytest.raises(ConnectionError):
        announce_next(sorter.sessions, unconfirmed)
    engine, sessions = open_catalog(str(sorter.sessions.kw["bind"].url), writer=True)
    assert [e.series_instance_uid for e in unannounced(sessions)] == [event.series_instance_uid]
    engine.dispose()
    published: list[SeriesCompleted] = []
    announced = announce_next(sorter.sessions, published.append)
    assert published == [announced]
    assert announced is not None and same_completion(announced, event)
    assert unannounced(sorter.sessions) == []
    assert announce_next(sorter.sessions, published.append) is None
    assert len(published) == 1


def unconfirmed(_event: SeriesCompleted) -> None:
    raise ConnectionError("the broker did not confirm")


def same_completion(a: SeriesCompleted, b: SeriesCompleted) -> bool:
    """The same completion, whatever the message ids of the two events."""
    fields = {"message_id", "occurred_at"}
    return a.model_dump(exclude=fields) == b.model_dump(exclude=fields)


def test_a_late_instance_reopens_a_complete_series_as_a_new_generation(
    sorter: Sorter, testdata: Path
) -> None:
    files = dicom_files(testdata, "ge_fmri_epi_4d")
    sorter.filer.file_batch([arrive(path, sorter.data) for path in files[:40]])
    complete_stable_series(sorter.sessions, stable_age=60, now=LATER)
    first = announce_next(sorter.sessions, lambda _event: None)
    assert first is not None and first.generation == 1

    sorter.filer.file_batch([arrive(path, sorter.data) for path in files[40:]])
    [series] = series_rows(sorter).values()
    assert (series.completion, series.generation, series.conversion) == (
        Completion.RECEIVING,
        2,
        "pending",
    )
    assert unannounced(sorter.sessions) == []
    complete_stable_series(sorter.sessions, stable_age=60, now=LATER)
    second = announce_next(sorter.sessions, lambda _event: None)
    assert second is not None
    assert (second.series_instance_uid, second.generation, second.instances) == (
        first.series_instance_uid,
        2,
        50,
    )
    assert unannounced(sorter.sessions) == []


def at_once(target: Callable[..., None], url: str, sorters: int) -> Any:
    """Run ``target(url, barrier, results)`` in that many processes, released together;
    the queue of their results."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(sorters), context.Queue()
    workers = [context.Process(target=target, args=(url, barrier, results)) for _ in range(sorters)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0
    return results


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
    results = at_once(_complete_in_process, catalog_url, sorters=3)
    counts = [results.get(timeout=5) for _ in range(3)]
    assert sum(counts) == 3, counts  # each series completed by exactly one of them
    rows = series_rows(sorter)
    assert len(rows) == 3 and all(s.completion == Completion.COMPLETE for s in rows.values())
    assert len(unannounced(sorter.sessions)) == 3


def _announce_in_process(url: str, barrier: object, published: object) -> None:
    engine, sessions = open_catalog(url, writer=True)

    def publish(event: SeriesCompleted) -> None:
        time.sleep(0.05)  # as a broker's confirm takes a moment: the others try meanwhile
        published.put((event.series_instance_uid, event.generation))  # type: ignore[attr-defined]

    barrier.wait()  # type: ignore[attr-defined]
    while announce_next(sessions, publish) is not None:
        pass
    engine.dispose()


def test_sorters_announcing_at_once_publish_each_completion_exactly_once(
    sorter: Sorter, testdata: Path, catalog_url: str
) -> None:
    folders = (
        "ge_fmri_epi_4d",
        "siemens_xa30_t1w_3d_classic",
        "d2n_hitachi_mr",
        "d2n_ct_gantry_tilt",
    )
    for folder in folders:
        file_folder(sorter, testdata, folder)
    assert complete_stable_series(sorter.sessions, stable_age=60, now=LATER) == len(folders)
    published = at_once(_announce_in_process, catalog_url, sorters=3)
    announced = [published.get(timeout=5) for _ in folders]
    assert published.empty()
    assert sorted(announced) == sorted(
        (s.series_instance_uid, s.generation) for s in series_rows(sorter).values()
    )
    assert unannounced(sorter.sessions) == []


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

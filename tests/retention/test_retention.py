"""Retention on a real archive and catalog (SQLite and PostgreSQL), with injected free space:
what goes, what stays, the dry run, crashes mid-eviction, several processes, the events."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select, update

from services.api.studies import StudyFilters, find_series, list_studies, study_detail
from services.retention import eviction
from services.retention.main import Retention, announce
from services.retention.settings import RetentionSettings
from services.sorter.completion import complete_stable_series
from shared import retrievals
from shared.broker import Publisher, connect
from shared.catalog.database import create_catalog_engine, open_catalog
from shared.catalog.models import (
    Eviction,
    InstanceHistory,
    Series,
    Study,
)
from shared.disk import DiskUsage
from shared.errors import TransientError
from shared.messages import StudyEvicted, Topology
from shared.retention import STALLED_CONVERSION, Policy, candidates, plan_evictions
from tests.arrivals import Sorter, arrive, dicom_files, next_stamp, with_new_uids
from tests.filed_studies import DAY, SERIES, Archive

pytestmark = pytest.mark.integration

TOTAL = 10**9  # the injected filesystem: 1 GB ...
FREE = 10**6  # ... with 1 MB free


@pytest.fixture
def archive(sorter: Sorter, testdata: Path, catalog_url: str) -> Archive:
    return Archive(sorter, testdata, catalog_url)


def injected(free: int) -> DiskUsage:
    return DiskUsage(TOTAL, free)


def measure_low(_path: Path) -> DiskUsage:
    return injected(FREE)


def test_the_oldest_unpinned_go_first_and_what_is_in_flight_stays(archive: Archive) -> None:
    oldest = archive.study(PatientID="ALONE")  # the only study of its patient
    pinned = archive.study()
    receiving = archive.study(convert=False)  # its series is still arriving
    converting = archive.study(convert=False)
    complete_stable_series(archive.sessions, stable_age=60)  # complete, conversion pending
    retrieving = archive.study()
    with archive.sessions.begin() as session:
        session.execute(update(Study).where(Study.study_instance_uid == pinned).values(pinned=True))
        retrievals.new_job(
            session, origin="request", pacs="PACS", query={}, studies=[(retrieving, [])]
        )
    next_oldest = archive.study()
    just_filed = archive.study(stamp=time.time_ns())  # within the stable age
    spare = archive.study()
    # The completions above completed it too: a new series of it starts arriving.
    archive.late_instance(receiving)
    need = archive.size(oldest) + archive.size(next_oldest)  # exactly these two must go
    settings = archive.settings(
        retention_low_free=f"{FREE + 1}", retention_target_free=f"{FREE + need}"
    )
    before = archive.rows()

    with archive.sessions() as session:
        dry_run = plan_evictions(
            session,
            lambda: injected(FREE),
            Policy.of(settings),
            datetime.now(UTC),
            settings.stable_age,
        )
        every = [c.study_uid for c in candidates(session, datetime.now(UTC), 60)]
        paged = [c.study_uid for c in candidates(session, datetime.now(UTC), 60, page=2)]
    assert every == paged == [oldest, next_oldest, spare], "oldest first, page after page"
    assert [(p.candidate.study_uid, p.reason) for p in dry_run.evictions] == [
        (oldest, "space"),
        (next_oldest, "space"),
    ]
    folders = {uid: archive.folder(uid) for uid in (oldest, next_oldest)}

    evicted = Retention(settings, archive.sessions, measure_low).round()

    assert [e.study_uid for e in evicted] == [p.candidate.study_uid for p in dry_run.evictions]
    assert sum(e.size_bytes for e in evicted) == dry_run.bytes == need
    assert archive.present() == {pinned, receiving, converting, retrieving, just_filed, spare}
    for kept in archive.present():
        assert archive.whole(kept), kept
    for uid, folder in folders.items():
        assert not folder.exists(), f"{uid}: its folder (instances and nifti/) is gone"
    after = archive.rows()
    assert after["studies"] == before["studies"] - 2
    assert after["series"] == before["series"] - 2
    assert after["instances"] == before["instances"] - 8
    assert after["nifti_outputs"] == before["nifti_outputs"] - 2
    assert after["patients"] == before["patients"] - 1  # the ALONE patient, not the shared one
    on_disk = {
        str(p.relative_to(archive.sorter.archive)) for p in archive.sorter.archive.rglob("*")
    }
    assert not [p for p in on_disk if p.startswith(eviction.TRASH + "/")]

    audit = archive.evictions()
    assert [(e.study_instance_uid, e.reason, e.size_bytes) for e in audit] == [
        (p.candidate.study_uid, "space", p.candidate.size_bytes) for p in dry_run.evictions
    ]
    assert all(e.evicted_at is not None and e.instance_count == 4 for e in audit)
    events = eviction.unannounced(archive.sessions)
    assert [e.study_instance_uid for e in events] == [oldest, next_oldest]
    assert events[0].folder == str(folders[oldest].relative_to(archive.sorter.archive))


def test_studies_past_the_maximum_age_go_whatever_the_space(archive: Archive) -> None:
    old = [archive.study(stamp=time.time_ns() - 40 * DAY) for _ in range(2)]
    young = archive.study(stamp=time.time_ns() - 20 * DAY)
    settings = archive.settings(retention_max_age_days=30)
    evicted = Retention(settings, archive.sessions, lambda _: injected(TOTAL // 2)).round()
    assert [(e.study_uid, e.reason) for e in evicted] == [(old[0], "age"), (old[1], "age")]
    assert archive.present() == {young}


def test_a_conversion_stalled_for_a_day_no_longer_holds_its_study(archive: Archive) -> None:
    """Its completion was dead-lettered, say: the study would otherwise never go."""
    stalled, converting = archive.study(convert=False), archive.study(convert=False)
    complete_stable_series(archive.sessions, stable_age=60)  # both complete, conversion pending
    long_ago = datetime.now(UTC) - STALLED_CONVERSION - timedelta(minutes=1)
    with archive.sessions.begin() as session:
        study_pk = select(Study.id).where(Study.study_instance_uid == stalled)
        session.execute(
            update(Series).where(Series.study_pk.in_(study_pk)).values(completed_at=long_ago)
        )
    settings = archive.settings(retention_low_free=f"{TOTAL}")  # every study it may take
    evicted = Retention(settings, archive.sessions, measure_low).round()
    assert [e.study_uid for e in evicted] == [stalled]
    assert archive.present() == {converting}


def test_a_crash_mid_eviction_is_finished_on_restart(archive: Archive) -> None:
    after_claim, after_files, mid_removal, kept = (archive.study() for _ in range(4))
    evicting = {uid: archive.candidate(uid) for uid in (after_claim, after_files, mid_removal)}
    settings = archive.settings()  # no eviction policy: a restart only finishes
    ids = {uid: eviction.claim(archive.sessions, c, "space", 60) for uid, c in evicting.items()}
    assert None not in ids.values()
    eviction.remove_files(archive.sessions, archive.sorter.archive, ids[after_files])
    # Stopped inside the removal: the folder moved aside, part of it deleted.
    trash = archive.sorter.archive / eviction.TRASH / str(ids[mid_removal])
    folder = archive.folder(mid_removal)
    trash.parent.mkdir(exist_ok=True)
    folder.rename(trash)
    next(p for p in trash.rglob("*.dcm")).unlink()

    # Nothing half-visible meanwhile: every reader sees the three as gone.
    with archive.sessions() as session:
        listed, _ = list_studies(
            session, StudyFilters(labs=None), sort="received", order="asc", limit=100, cursor=None
        )
        assert [s.study_uid for s in listed] == [kept]
        for uid in evicting:
            assert study_detail(session, uid, None) is None
            assert retrievals.filed_instances(session, [uid]) == {}
        series_uid = session.scalar(
            select(Series.series_instance_uid)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_instance_uid == after_claim)
        )
        assert series_uid is not None and find_series(session, series_uid, None) is None
    # ... and the sorter files nothing into a study being evicted: the instance waits.
    resent = with_new_uids(dicom_files(archive.testdata, SERIES)[0], study=after_claim)
    waiting = arrive(resent, archive.sorter.data, stamp=next_stamp())
    with pytest.raises(TransientError, match="evicted"):
        archive.sorter.filer.file_batch([waiting])

    engine, sessions = open_catalog(archive.url, writer=True)  # the restarted service
    try:
        finished = Retention(settings, sessions, measure_low).round()
    finally:
        engine.dispose()
    assert sorted(e.study_uid for e in finished) == sorted(evicting)
    assert archive.present() == {kept} and archive.whole(kept)
    assert not trash.exists() and not folder.exists()
    assert all(e.evicted_at is not None for e in archive.evictions())
    assert len(eviction.unannounced(archive.sessions)) == 3
    # Once it is gone, the instance that waited starts the study afresh.
    [outcome] = archive.sorter.filer.file_batch([waiting])
    assert outcome.filed is not None and after_claim in archive.present()
    assert len(list(archive.folder(after_claim).rglob("*.dcm"))) == 1


def test_a_study_pinned_or_reopened_after_the_plan_is_not_claimed(archive: Archive) -> None:
    pinned, reopened = archive.study(), archive.study()
    plan_of = {uid: archive.candidate(uid) for uid in (pinned, reopened)}
    with archive.sessions.begin() as session:
        session.execute(update(Study).where(Study.study_instance_uid == pinned).values(pinned=True))
    archive.late_instance(reopened)  # a new series: the study is in flight again
    for uid, candidate in plan_of.items():
        assert eviction.claim(archive.sessions, candidate, "space", 60) is None, uid
    assert archive.present() == {pinned, reopened} and archive.evictions() == []


class FreedByEvictions:
    """A disk with FREE bytes free, plus what the evictions closed so far freed."""

    def __init__(self, url: str) -> None:
        self.engine = create_catalog_engine(url)  # reads beside a planning writer's lock

    def __call__(self, _path: Path) -> DiskUsage:
        closed = select(func.coalesce(func.sum(Eviction.size_bytes), 0)).where(
            Eviction.evicted_at.is_not(None)
        )
        with self.engine.connect() as connection:
            return injected(FREE + int(connection.scalar(closed) or 0))


def _evict_in_process(url: str, data: str, target: int, barrier: object, results: object) -> None:
    settings = RetentionSettings(
        data_dir=Path(data),
        database_url=url,
        retention_low_free=f"{FREE + 1}",
        retention_target_free=f"{target}",
    )
    engine, sessions = open_catalog(url, writer=True)
    barrier.wait()  # type: ignore[attr-defined]
    evicted = Retention(settings, sessions, FreedByEvictions(url)).round()
    results.put([e.study_uid for e in evicted])  # type: ignore[attr-defined]
    engine.dispose()


def test_several_retention_processes_evict_each_study_once(archive: Archive) -> None:
    studies = [archive.study() for _ in range(6)]
    target = FREE + sum(archive.size(uid) for uid in studies[:4])
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [
        context.Process(
            target=_evict_in_process,
            args=(archive.url, str(archive.sorter.data), target, barrier, results),
        )
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    evicted = [uid for _ in workers for uid in results.get(timeout=5)]
    assert len(evicted) == len(set(evicted)) and set(evicted) <= set(studies[:4])
    # A study freed by another process meanwhile may be counted twice, never missed:
    # the processes may leave some to the next round, never take one too many.
    settings = archive.settings(retention_low_free=f"{FREE + 1}", retention_target_free=f"{target}")
    evicted += [
        e.study_uid
        for e in Retention(settings, archive.sessions, FreedByEvictions(archive.url)).round()
    ]
    assert sorted(evicted) == sorted(studies[:4])
    assert sorted(e.study_instance_uid for e in archive.evictions()) == sorted(studies[:4])
    assert archive.present() == set(studies[4:])


def test_evictions_are_announced_once(archive: Archive, broker_url: str) -> None:
    studies = [archive.study() for _ in range(2)]
    settings = archive.settings(retention_max_age_days=0.5)
    Retention(settings, archive.sessions, measure_low).round()

    async def announced_twice() -> list[StudyEvicted]:
        connection = await connect(broker_url, name="test")
        topology = Topology()
        publisher = Publisher(connection, topology)
        await publisher.start()
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(topology.events_exchange, routing_key=StudyEvicted.routing_key)
        await announce(archive.sessions, publisher)
        await announce(archive.sessions, publisher)  # nothing left to announce
        received: list[StudyEvicted] = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            received.append(StudyEvicted.model_validate_json(message.body))
        await connection.close()
        return received

    received = asyncio.run(announced_twice())
    assert [(e.study_instance_uid, e.reason) for e in received] == [(s, "age") for s in studies]
    audit = archive.evictions()
    assert [(e.eviction_id, e.size_bytes) for e in received] == [
        (row.id, row.size_bytes) for row in audit
    ]
    assert all(e.instances == 4 and e.series == 1 for e in received)
    assert eviction.unannounced(archive.sessions) == [] and all(row.announced for row in audit)


def test_retention_processes_announcing_at_once_publish_each_eviction_once(
    archive: Archive, catalog_url: str
) -> None:
    for _ in range(3):
        archive.study()
    Retention(archive.settings(retention_max_age_days=0.5), archive.sessions, measure_low).round()
    engine, other_sessions = open_catalog(catalog_url, writer=True)  # another process's
    published: list[int] = []
    other_done = threading.Event()

    def other_process() -> None:
        while eviction.announce_next(other_sessions, lambda e: published.append(e.eviction_id)):
            pass
        other_done.set()

    other = threading.Thread(target=other_process)

    def slow_confirm(event: StudyEvicted) -> None:
        published.append(event.eviction_id)
        if not other.is_alive() and not other_done.is_set():
            other.start()  # the other announces while this one waits for its confirm
            other_done.wait(2)  # SQLite: the other waits for this one's write lock

    while eviction.announce_next(archive.sessions, slow_confirm):
        pass
    other.join(30)
    engine.dispose()
    assert sorted(published) == [row.id for row in archive.evictions()]
    assert eviction.unannounced(archive.sessions) == []


def test_copies_replaced_in_a_study_are_counted_and_evicted_with_it(archive: Archive) -> None:
    """A correction of one instance keeps the copy it replaced under history/: the study's
    size counts it, and eviction removes it and its row with the study."""
    study = archive.study()
    corrected = next(archive.folder(study).rglob("*.dcm"))
    dataset = dcmread(corrected)
    dataset.ImageComments = "corrected"
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    size_before, old_size = archive.size(study), corrected.stat().st_size
    (outcome,) = archive.sorter.filer.file_batch(
        [arrive(buffer.getvalue(), archive.sorter.data, stamp=time.time_ns() - DAY)]
    )
    assert outcome.replaced
    complete_stable_series(archive.sessions, stable_age=60)
    with archive.sessions.begin() as session:
        session.execute(
            update(Series).values(conversion="converted", converted_generation=Series.generation)
        )
    history = archive.sorter.data / "history"
    (kept,) = history.rglob("*.dcm")
    assert kept.stat().st_size == old_size
    # The study now holds the correction, and history/ the copy it replaced.
    assert archive.size(study) == size_before - old_size + len(buffer.getvalue()) + old_size

    settings = archive.settings(retention_max_age_days=0.5)
    (evicted,) = Retention(settings, archive.sessions, lambda _: injected(TOTAL // 2)).round()

    assert evicted.study_uid == study
    assert list(history.rglob("*.dcm")) == []
    with archive.sessions() as session:
        assert session.scalar(select(func.count()).select_from(InstanceHistory)) == 0
    assert evicted.size_bytes == size_before + len(buffer.getvalue())

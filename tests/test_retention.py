"""Retention on a real archive and catalog (SQLite and PostgreSQL), with injected free space:
what goes, what stays, the dry run, crashes mid-eviction, several processes, the events."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.api.studies import StudyFilters, find_series, list_studies, study_detail
from services.retention import eviction
from services.retention.main import Retention, announce
from services.retention.settings import RetentionSettings
from services.sorter.completion import complete_stable_series
from shared import retrievals
from shared.broker import Publisher, connect
from shared.catalog.database import create_catalog_engine, open_catalog
from shared.catalog.models import (
    CONVERTED,
    Eviction,
    Instance,
    NiftiOutput,
    Patient,
    Series,
    Study,
)
from shared.disk import DiskUsage
from shared.errors import TransientError
from shared.messages import EVENTS_EXCHANGE, StudyEvicted
from shared.retention import Candidate, Policy, candidates, plan_evictions, study_sizes
from tests.arrivals import Sorter, arrive, dicom_files, with_new_uids

pytestmark = pytest.mark.integration

SERIES = "d2n_hitachi_mr"  # 4 small MR slices: a study made of it is about 84 KB
DAY = 86_400 * 10**9
TOTAL = 10**9  # the injected filesystem: 1 GB ...
FREE = 10**6  # ... with 1 MB free
# Reception times a day ago, a millisecond apart: older than any stable age.
_stamps = itertools.count(time.time_ns() - DAY, 10**6)


@dataclass
class Archive:
    """The sorter's archive and catalog, and how to put whole studies into them."""

    sorter: Sorter
    testdata: Path
    url: str

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.sorter.sessions

    def study(self, *, stamp: int | None = None, convert: bool = True, **tags: object) -> str:
        """A new study (the small series under new UIDs) filed, complete and converted."""
        study, series = generate_uid(), generate_uid()
        self.sorter.filer.file_batch(
            [
                arrive(
                    with_new_uids(path, study=study, series=series, **tags),
                    self.sorter.data,
                    stamp=stamp or next(_stamps),
                )
                for path in dicom_files(self.testdata, SERIES)
            ]
        )
        if convert:
            complete_stable_series(self.sessions, stable_age=60)
            self.convert(series)
        return study

    def convert(self, series_uid: str) -> None:
        """What the converter leaves: a NIfTI volume and sidecar in the study's nifti/."""
        with self.sessions.begin() as session:
            series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
            assert series is not None
            base = f"{series.study.relative_folder}/nifti/{series.folder}"
            for suffix, content in ((".nii.gz", b"\x1f\x8b" + b"\0" * 5000), (".json", b"{}")):
                path = self.sorter.archive / f"{base}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            series.outputs.append(
                NiftiOutput(
                    path=f"{base}.nii.gz",
                    sidecar_path=f"{base}.json",
                    engine="test",
                    size=5002,
                    created_at=datetime.now(UTC),
                )
            )
            series.conversion = CONVERTED
            series.converted_generation = series.generation

    def pk(self, study_uid: str) -> int:
        with self.sessions() as session:
            found = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
            assert found is not None
            return found

    def size(self, study_uid: str) -> int:
        pk = self.pk(study_uid)
        with self.sessions() as session:
            return study_sizes(session, [pk])[pk]

    def folder(self, study_uid: str) -> Path:
        with self.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            assert study is not None
            return self.sorter.archive / study.relative_folder

    def rows(self) -> dict[str, int]:
        with self.sessions() as session:
            return {
                table.__tablename__: session.scalar(select(func.count()).select_from(table)) or 0
                for table in (Study, Series, Instance, NiftiOutput, Patient)
            }

    def present(self) -> set[str]:
        with self.sessions() as session:
            return set(session.scalars(select(Study.study_instance_uid)))

    def whole(self, study_uid: str) -> bool:
        """Every file the catalog lists for the study is on disk."""
        with self.sessions() as session:
            paths = list(
                session.scalars(
                    select(Instance.path)
                    .join(Series, Series.id == Instance.series_pk)
                    .join(Study, Study.id == Series.study_pk)
                    .where(Study.study_instance_uid == study_uid)
                )
            )
            outputs = list(
                session.scalars(
                    select(NiftiOutput.path)
                    .join(Series, Series.id == NiftiOutput.series_pk)
                    .join(Study, Study.id == Series.study_pk)
                    .where(Study.study_instance_uid == study_uid)
                )
            )
        return bool(paths) and all((self.sorter.archive / p).is_file() for p in paths + outputs)

    def evictions(self) -> list[Eviction]:
        with self.sessions() as session:
            return list(session.scalars(select(Eviction).order_by(Eviction.id)))

    def settings(self, **values: object) -> RetentionSettings:
        return RetentionSettings(
            data_dir=self.sorter.data,
            database_url=self.url,
            **values,  # type: ignore[arg-type]
        )


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
    # Made in-flight after the fact: a late instance reopens the series of `receiving`.
    archive.sorter.filer.file_batch(
        [
            arrive(
                with_new_uids(dicom_files(archive.testdata, SERIES)[0], study=receiving),
                archive.sorter.data,
                stamp=next(_stamps),
            )
        ]
    )
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


def test_a_crash_mid_eviction_is_finished_on_restart(archive: Archive) -> None:
    after_claim, after_files, mid_removal, kept = (archive.study() for _ in range(4))
    evicting = {uid: _candidate(archive, uid) for uid in (after_claim, after_files, mid_removal)}
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
            session, StudyFilters(), sort="received", order="asc", limit=100, cursor=None
        )
        assert [s.study_uid for s in listed] == [kept]
        for uid in evicting:
            assert study_detail(session, uid) is None
            assert retrievals.filed_instances(session, [uid]) == {}
        series_uid = session.scalar(
            select(Series.series_instance_uid)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_instance_uid == after_claim)
        )
        assert series_uid is not None and find_series(session, series_uid) is None
    # ... and the sorter files nothing into a study being evicted: the instance waits.
    resent = with_new_uids(dicom_files(archive.testdata, SERIES)[0], study=after_claim)
    waiting = arrive(resent, archive.sorter.data, stamp=next(_stamps))
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
    plan_of = {uid: _candidate(archive, uid) for uid in (pinned, reopened)}
    with archive.sessions.begin() as session:
        session.execute(update(Study).where(Study.study_instance_uid == pinned).values(pinned=True))
    archive.sorter.filer.file_batch(
        [
            arrive(
                with_new_uids(dicom_files(archive.testdata, SERIES)[0], study=reopened),
                archive.sorter.data,
                stamp=next(_stamps),
            )
        ]
    )
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
        publisher = Publisher(connection)
        await publisher.start()
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(EVENTS_EXCHANGE, routing_key=StudyEvicted.routing_key)
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


def _candidate(archive: Archive, study_uid: str) -> Candidate:
    """The study as the plan would list it."""
    with archive.sessions() as session:
        return next(
            c for c in candidates(session, datetime.now(UTC), 60) if c.study_uid == study_uid
        )

"""Filing one received instance: archive tree first, catalog second, incoming last.

The order makes every step safe to repeat after a crash:

1. read the file in ``incoming/`` once (header and checksum);
2. in one catalog transaction: find or create patient, study and series (their
   folders are decided once, when first seen, and never collide), place the
   file in the archive by linking it under a temporary name and renaming it
   over the destination (newest wins), then record the instance and commit;
3. remove the file from ``incoming/``.

Folders and files placed in the archive get the share's group and modes (`shared.share`).
The folders are synced before the commit, except for instances of a retrieval dcmdb asked
for itself: its job syncs the filesystem once at its end (`shared.unsynced`).

A crash before 3 leaves the file in ``incoming/``; the broker redelivers the
event (or the receiver's sweep announces it again) and the same steps give the
same result. An event whose file is gone and whose reception the catalog
already holds is a duplicate: it is acknowledged and its ``instance.filed``
event sent again.

A copy of an instance filed already is judged by ``DCMDB_OVERWRITE``
(`services.sorter.copies`): one that replaces is filed, and its series converts again; the
copies not filed go to ``history/`` or ``quarantine/``. An instance of a study filed under
another lab than its Referring Physician names goes to ``quarantine/`` too: a lab never sees
another lab's instances.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from services.sorter.copies import Arrival, Copies, Work
from services.sorter.rows import BatchRows
from shared.catalog.counts import recount_series
from shared.catalog.models import Instance, Series, Study
from shared.durable import copy_synced, fsync_directory, link_or_copy
from shared.errors import TransientError
from shared.headers import Header, Identifiers
from shared.logs import about
from shared.messages import InstanceFiled, InstanceReceived
from shared.naming import (
    UNKNOWN_PHYSICIAN,
    PhysicianAliases,
    instance_file_name,
    physician_folder,
    resolve_under,
)
from shared.overwrite import Decision, OverwritePolicy, Verdict
from shared.share import LabFolders, make_archive_root, settle_file

log = logging.getLogger(__name__)

ATTEMPTS = 10  # concurrent sorters may race to create the same rows, or deadlock on them
_RETRYABLE = frozenset({"40P01", "40001"})  # PostgreSQL: deadlock detected, serialization failure


@dataclass(frozen=True)
class Outcome:
    """What filing did; ``filed`` is None when there was nothing to announce."""

    filed: InstanceFiled | None
    duplicate: bool = False
    replaced: bool = False


class Filer:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        data_dir: Path,
        archive_root: Path,
        quarantine_dir: Path,
        aliases: PhysicianAliases | None = None,
        keys_file: Path | None = None,
        policy: OverwritePolicy = OverwritePolicy.BETTER,
        history_dir: Path | None = None,
    ) -> None:
        """``keys_file`` names each lab folder's group (`shared.share`); by default
        ``<data_dir>/keys.yaml``, as the settings' default; ``history_dir`` by default
        ``<data_dir>/history``."""
        self._sessions = sessions
        self._data_dir = data_dir
        self._archive = archive_root
        self._quarantine = quarantine_dir
        self._aliases = aliases
        self._copies = Copies(
            archive_root, history_dir or data_dir / "history", quarantine_dir, policy
        )
        self._folders = LabFolders(archive_root, keys_file or data_dir / "keys.yaml")
        make_archive_root(archive_root)

    def file(self, event: InstanceReceived) -> Outcome:
        return self.file_batch([event])[0]

    def file_batch(self, events: list[InstanceReceived]) -> list[Outcome]:
        """File every event's instance, in one catalog transaction."""
        outcomes: list[Outcome | None] = []
        arrivals: list[Arrival] = []
        for event in events:
            with about(event):
                arrival_or_outcome = self._read(event)
            if isinstance(arrival_or_outcome, Arrival):
                arrivals.append(arrival_or_outcome)
                outcomes.append(None)
            else:
                outcomes.append(arrival_or_outcome)
        recorded: dict[int, Outcome] = {}
        for batch in _rounds(arrivals):  # two copies of one instance are judged one by one
            recorded.update(zip(map(id, batch), self._record_all(batch), strict=True))
        for arrival in arrivals:
            arrival.source.unlink(missing_ok=True)
        in_order = iter(recorded[id(arrival)] for arrival in arrivals)
        results = [outcome if outcome is not None else next(in_order) for outcome in outcomes]
        for event, result in zip(events, results, strict=True):
            if result.filed is not None:
                with about(event):
                    log.debug("filed instance %s", event.sop_instance_uid)
        return results

    def _read(self, event: InstanceReceived) -> Arrival | Outcome:
        source = self._data_dir / event.incoming_path
        try:
            content = source.read_bytes()
        except FileNotFoundError:
            return self._already_filed(event)
        except OSError as exc:
            raise TransientError(f"cannot read {event.incoming_path}: {exc}") from exc
        try:
            header = Header.from_part10(content)
            uids = header.identifiers()
        except Exception as exc:
            self._quarantine_file(source, f"unreadable at sorting: {exc}")
            return Outcome(filed=None)
        checksum = hashlib.sha256(content).hexdigest()
        return Arrival(event, source, header, uids, len(content), checksum)

    def _record_all(self, arrivals: list[Arrival]) -> list[Outcome]:
        for attempt in range(1, ATTEMPTS + 1):
            work = Work()
            try:
                with self._sessions.begin() as session, session.no_autoflush:
                    rows = BatchRows(
                        session,
                        self._aliases,
                        {a.uids.sop_instance_uid for a in arrivals},
                        {a.uids.study_instance_uid for a in arrivals},
                        {a.uids.series_instance_uid for a in arrivals},
                    )
                    previous_series = {row.series_pk for row in rows.instances.values()}
                    outcomes = []
                    for arrival in arrivals:
                        with about(arrival.event):
                            outcomes.append(self._record(rows, arrival, work))
                    # Every conflict with a concurrent sorter surfaces in this flush, before any
                    # file is touched; from here to the commit the rows stay locked.
                    session.flush()
                    current_series = {row.series_pk for row in rows.instances.values()}
                    recount_series(session, previous_series | current_series)
                    self._copies.keep(work.kept)  # durable before a placement replaces one
                    for source, destination, _deferred in work.placements:
                        self._folders.make(destination.parent)
                        _place(source, destination)
                    # Durable before the commit, but for dcmdb's own retrievals: their job
                    # makes them durable at its end.
                    for folder in {d.parent for _, d, deferred in work.placements if not deferred}:
                        fsync_directory(folder)
                break
            except IntegrityError as exc:
                if attempt == ATTEMPTS:
                    raise TransientError(f"catalog conflict persists: {exc.orig}") from exc
                log.debug("a concurrent sorter created the same row; trying again")
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) not in _RETRYABLE or attempt == ATTEMPTS:
                    raise TransientError(f"catalog unavailable: {exc.orig}") from exc
                log.debug("deadlock with a concurrent sorter; trying again")
            except OSError as exc:
                raise TransientError(f"cannot write to the archive: {exc}") from exc
            time.sleep(random.uniform(0, 0.01 * attempt))  # let the other sorter commit first
        for path in work.superseded:
            path.unlink(missing_ok=True)
        for arrival, reason in work.refused:
            self._copies.quarantine_refused(arrival, reason)
        return outcomes

    def _record(self, rows: BatchRows, arrival: Arrival, work: Work) -> Outcome:
        event, header, uids = arrival.event, arrival.header, arrival.uids
        existing = rows.instances.get(uids.sop_instance_uid)
        lab = physician_folder(header.text("ReferringPhysicianName"), self._aliases)
        filed_lab = rows.lab_of(uids.study_instance_uid)
        # An instance naming no physician joins its study's lab (the study-level attribute
        # is missing on a derived object, say); one naming another lab is not mixed in.
        if filed_lab is not None and lab not in (filed_lab, UNKNOWN_PHYSICIAN):
            work.refused.append((arrival, f"its study is filed under another lab ({filed_lab})"))
            return Outcome(filed=None)
        # Nor does a copy take an instance out of another lab's study into its own.
        if existing is not None and (filed_lab or lab) != (its_lab := _lab_of(existing.path)):
            work.refused.append((arrival, f"the instance is filed under another lab ({its_lab})"))
            return Outcome(filed=None)
        replacing: Decision | None = None
        if existing is not None:
            judged = self._copies.judge(rows, existing, arrival, work)
            if judged is None:  # older, kept in history/: the filed copy stays as it is
                return Outcome(filed=None, duplicate=True)
            if judged.verdict is Verdict.IDENTICAL:
                # Announced again as filed, as the first copy was.
                return _filed_again(event, existing.path, _lab_of(existing.path))
            if judged.verdict is Verdict.REFUSE:
                work.refused.append((arrival, judged.reason))
                return Outcome(filed=None)
            replacing = judged
        study = rows.study(uids.study_instance_uid, header, event.received_at)
        series = rows.series(uids.series_instance_uid, study, header, event.received_at)
        relative = "/".join(
            (
                study.physician_folder,
                study.folder,
                series.folder,
                instance_file_name(uids.sop_instance_uid),
            )
        )
        destination = resolve_under(self._archive, *relative.split("/"))
        # Placed once every row is flushed.
        work.placements.append((arrival.source, destination, event.deferred_sync))
        if existing and existing.path != relative:
            work.superseded.append(self._archive / existing.path)
        if existing and replacing:
            self._copies.keep_filed(rows, existing, arrival, replacing.reason, work)
        instance = rows.instance(uids.sop_instance_uid)
        instance.series_pk = series.id
        instance.sop_class_uid = uids.sop_class_uid
        instance.transfer_syntax_uid = event.transfer_syntax_uid
        instance.instance_number = header.integer("InstanceNumber")
        instance.path = relative
        instance.size = arrival.size
        instance.sha256 = arrival.checksum
        instance.received_at = event.received_at
        instance.calling_ae = event.calling_ae
        if replacing:
            instance.replacements += 1
            log.info("replaced instance %s with a newer copy: %s", uids.sop_instance_uid,
                     replacing.reason)  # fmt: skip
        return _announced(uids, relative, study.physician_folder, replaced=replacing is not None)

    def _already_filed(self, event: InstanceReceived) -> Outcome:
        with self._sessions() as session:
            row = session.execute(
                select(Instance, Study)
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .where(Instance.sop_instance_uid == event.sop_instance_uid)
            ).first()
        if row is None or row.Instance.received_at != event.received_at:
            log.info("nothing to file: the file of this event was filed or superseded earlier")
            return Outcome(filed=None, duplicate=True)
        return _filed_again(event, row.Instance.path, row.Study.physician_folder)

    def _quarantine_file(self, source: Path, reason: str) -> None:
        log.error("moving an unreadable file to quarantine: %s", reason)
        self._quarantine.mkdir(parents=True, exist_ok=True)
        target = self._quarantine / source.name
        shutil.move(source, target)
        target.with_suffix(".txt").write_text(reason + "\n")


def _announced(
    uids: Identifiers | InstanceReceived, archive_path: str, physician: str, *, replaced: bool
) -> Outcome:
    """An instance filed now, with its ``instance.filed`` event."""
    return Outcome(
        filed=InstanceFiled(
            sop_instance_uid=uids.sop_instance_uid,
            study_instance_uid=uids.study_instance_uid,
            series_instance_uid=uids.series_instance_uid,
            archive_path=archive_path,
            physician_folder=physician,
            replaced=replaced,
        ),
        replaced=replaced,
    )


def _filed_again(event: InstanceReceived, archive_path: str, physician: str) -> Outcome:
    """A copy filed already (or the same again): its ``instance.filed``, sent again."""
    outcome = _announced(event, archive_path, physician, replaced=False)
    return Outcome(filed=outcome.filed, duplicate=True)


def _rounds(arrivals: list[Arrival]) -> list[list[Arrival]]:
    """The arrivals in batches that each hold one copy of an instance at most, in order."""
    rounds: list[list[Arrival]] = []
    for arrival in arrivals:
        uid = arrival.uids.sop_instance_uid
        free = next((r for r in rounds if all(a.uids.sop_instance_uid != uid for a in r)), None)
        if free is None:
            rounds.append(free := [])
        free.append(arrival)
    return rounds


def _place(source: Path, destination: Path) -> None:
    """Put ``source``'s bytes at ``destination`` (its folder exists) atomically, keeping
    ``source``, mode 0640 in the folder's group."""
    temporary = destination.with_name(f".{uuid.uuid4().hex}.partial")
    link_or_copy(source, temporary)
    try:
        if not settle_file(temporary):
            # This process may not give the link (one file with the source) the folder's
            # group; a copy made in the (setgid) folder takes it.
            temporary.unlink()
            copy_synced(source, temporary)
            settle_file(temporary)
        os.replace(temporary, destination)
    finally:
        # rename() does nothing when both names are links to one file (the source was placed
        # already: a redelivery after a crash, a batch retried): the temporary name stays.
        temporary.unlink(missing_ok=True)


def _lab_of(archive_path: str) -> str:
    """The lab folder of an instance filed at ``archive_path`` (relative to the archive)."""
    return archive_path.split("/", 1)[0]

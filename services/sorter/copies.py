"""Copies of a filed instance, judged by ``DCMDB_OVERWRITE`` (`shared.overwrite`).

A copy is judged as though the copies had been filed in the order they were received,
whichever sorter meets which first: the same data set again changes nothing; a copy that
replaces puts the filed one under ``history/`` (linked there, and synced, before the new one
takes its place; an `InstanceHistory` row says why); one that does not goes to
``quarantine/`` with the reason; an older copy that the filed one would have replaced goes
to ``history/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.sorter.rows import BatchRows
from shared.catalog.models import Instance, InstanceHistory
from shared.durable import fsync_directory, link_or_copy, write_synced
from shared.errors import TransientError, UnreadableObject
from shared.filed_copies import read_filed_copy
from shared.headers import Header, Identifiers
from shared.messages import InstanceReceived
from shared.overwrite import Copy, Decision, OverwritePolicy, Verdict, decide, history_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrival:
    """A received file, read once: its header and checksum."""

    event: InstanceReceived
    source: Path
    header: Header
    uids: Identifiers
    size: int
    checksum: str


@dataclass
class Work:
    """The files one attempt at a batch moves: copies kept in history/ and placed in the
    archive before the commit; old files removed and refused copies quarantined after it."""

    kept: list[tuple[Path, Path]] = field(default_factory=list)
    placements: list[tuple[Path, Path, bool]] = field(default_factory=list)  # deferred sync
    superseded: list[Path] = field(default_factory=list)
    refused: list[tuple[Arrival, str]] = field(default_factory=list)


class Copies:
    """Judges a copy of a filed instance, and keeps the copies it does not file."""

    def __init__(
        self, archive_root: Path, history_dir: Path, quarantine_dir: Path, policy: OverwritePolicy
    ) -> None:
        self._archive = archive_root
        self._history = history_dir
        self._quarantine = quarantine_dir
        self._policy = policy

    def judge(
        self, rows: BatchRows, existing: Instance, arrival: Arrival, work: Work
    ) -> Decision | None:
        """The decision on a copy of a filed instance, taken as though the copies had been
        filed in the order received. None: the arriving copy is older, and kept in history/
        as one the filed copy replaced."""
        if existing.sha256 == arrival.checksum:
            return Decision(Verdict.IDENTICAL, "the same file")
        filed = read_filed_copy(self._archive, self._history, existing.path, existing.sha256)
        try:
            arriving = Copy.of_file(arrival.source.read_bytes())
        except (OSError, UnreadableObject) as exc:  # read once already: the disk is failing
            raise TransientError(f"cannot read {arrival.event.incoming_path} again: {exc}") from exc
        if arrival.event.received_at >= existing.received_at or filed is None:
            return decide(self._policy, filed, arriving)
        # An older copy, filed after a newer one: had it come first, would the newer replace it?
        before = decide(self._policy, arriving, filed)
        if before.verdict is Verdict.REFUSE:
            return Decision(Verdict.REPLACE, f"received first; the filed copy has {before.reason}")
        if before.verdict is Verdict.REPLACE:
            self._keep_older(rows, existing, arrival, before.reason, work)
        return None

    def keep_filed(
        self, rows: BatchRows, existing: Instance, arrival: Arrival, reason: str, work: Work
    ) -> None:
        """The filed copy, replaced by ``arrival``: into history/, and its row."""
        kept = history_path(existing.path, existing.sha256)
        work.kept.append((self._archive / existing.path, self._history / kept))
        rows.add_history(
            InstanceHistory(
                sop_instance_uid=arrival.uids.sop_instance_uid,
                study_instance_uid=arrival.uids.study_instance_uid,
                replaced_at=datetime.now(UTC),
                reason=reason,
                kept_path=str(kept),
                old_received_at=existing.received_at,
                old_calling_ae=existing.calling_ae,
                old_size=existing.size,
                old_sha256=existing.sha256,
                new_received_at=arrival.event.received_at,
                new_calling_ae=arrival.event.calling_ae,
                new_size=arrival.size,
                new_sha256=arrival.checksum,
            )
        )

    def _keep_older(
        self, rows: BatchRows, existing: Instance, arrival: Arrival, reason: str, work: Work
    ) -> None:
        """An older copy than the filed one, which the filed one replaces: into history/."""
        kept = history_path(existing.path, arrival.checksum)
        work.kept.append((arrival.source, self._history / kept))
        log.info("an older copy of instance %s, replaced by the filed one, kept in history/",
                 arrival.uids.sop_instance_uid)  # fmt: skip
        rows.add_history(
            InstanceHistory(
                sop_instance_uid=arrival.uids.sop_instance_uid,
                study_instance_uid=arrival.uids.study_instance_uid,
                replaced_at=datetime.now(UTC),
                reason=f"received before the filed copy: {reason}",
                kept_path=str(kept),
                old_received_at=arrival.event.received_at,
                old_calling_ae=arrival.event.calling_ae,
                old_size=arrival.size,
                old_sha256=arrival.checksum,
                new_received_at=existing.received_at,
                new_calling_ae=existing.calling_ae,
                new_size=existing.size,
                new_sha256=existing.sha256,
            )
        )

    def keep(self, kept: list[tuple[Path, Path]]) -> None:
        """Link each copy into history/ (where a filing cut short put it already, it stays)
        and make the links durable."""
        for source, target in kept:
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source, target)
        for folder in {target.parent for _, target in kept}:
            fsync_directory(folder)

    def quarantine_refused(self, arrival: Arrival, reason: str) -> None:
        """A copy not filed: into quarantine/, with why and whence beside it."""
        log.warning("instance %s from %s not filed, kept in quarantine: %s",
                    arrival.uids.sop_instance_uid, arrival.event.calling_ae, reason)  # fmt: skip
        self._quarantine.mkdir(parents=True, exist_ok=True)
        target = self._quarantine / arrival.source.name
        note = {
            "reason": f"not filed: {reason}",
            "calling_ae": arrival.event.calling_ae,
            "received_at": arrival.event.received_at.isoformat(),
            "sop_instance_uid": arrival.uids.sop_instance_uid,
        }
        write_synced(target.with_suffix(".json"), json.dumps(note).encode())
        with contextlib.suppress(FileNotFoundError):  # moved by an earlier attempt
            os.replace(arrival.source, target)

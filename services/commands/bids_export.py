"""A lab's BIDS dataset kept in a directory of the lab's own, one session ZIP at a time.

`ExportedDataset` puts a session the API handed out (a small dataset of one session) into
the directory: its ``sub-S/ses-T`` folder written beside the old one, then swapped in;
its participants row merged into ``participants.tsv`` by ``participant_id``;
``dataset_description.json`` and ``participants.json`` written where they are missing.
``.dcmdb-export.json`` remembers which session each study made and its ETag, so that the
next run asks for a session only if it changed, and a session whose name changed (new
naming rules) leaves its old folder behind no more.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from services.api.client import extract_zip

STATE_FILE = ".dcmdb-export.json"
PARTICIPANTS = "participants.tsv"
_KEPT_IF_PRESENT = ("dataset_description.json", "participants.json")


class ExportError(Exception):
    """A session the directory cannot take; the message says why."""


@dataclass
class Exported:
    session: str  # "sub-S/ses-T"
    etag: str | None


@dataclass
class ExportedDataset:
    directory: Path
    lab: str
    studies: dict[str, Exported] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: Path, lab: str) -> ExportedDataset:
        """The dataset in `directory` (made if missing); ExportError when it holds
        another lab's export."""
        directory.mkdir(parents=True, exist_ok=True)
        try:
            state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(directory, lab)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ExportError(f"{directory / STATE_FILE} is damaged ({exc}); remove it") from None
        if state.get("lab") != lab:
            raise ExportError(
                f"{directory} holds the export of lab {state.get('lab')!r}, not {lab!r}"
            )
        studies = {
            uid: Exported(entry["session"], entry.get("etag"))
            for uid, entry in state.get("studies", {}).items()
        }
        return cls(directory, lab, studies)

    def etag(self, study_uid: str) -> str | None:
        """The ETag to ask with: None when the study's folder is gone from the directory."""
        known = self.studies.get(study_uid)
        if known is None or not (self.directory / known.session).is_dir():
            return None
        return known.etag

    def put(self, study_uid: str, archive: Path, etag: str | None) -> bool:
        """Put the session of `archive` in place of the study's; True when it replaced
        one that was there."""
        with tempfile.TemporaryDirectory(prefix=".dcmdb-session-", dir=self.directory) as work:
            unpacked = Path(work)
            extract_zip(archive, unpacked)
            session = _session_of(unpacked)
            replaced = self._swap_in(unpacked / session, self.directory / session)
            self._merge_participants(unpacked / PARTICIPANTS)
            for name in _KEPT_IF_PRESENT:
                if (unpacked / name).is_file() and not (self.directory / name).exists():
                    os.replace(unpacked / name, self.directory / name)
        before = self.studies.get(study_uid)
        if before is not None and before.session != session and not self._claimed(before):
            shutil.rmtree(self.directory / before.session, ignore_errors=True)
        self.studies[study_uid] = Exported(session, etag)
        self._save()
        return replaced

    def drop(self, study_uid: str) -> str | None:
        """The study's session, exported before, gone from dcmdb's dataset: it goes from
        this one too. Its name, or None when it had none here."""
        before = self.studies.pop(study_uid, None)
        if before is None:
            return None
        if not self._claimed(before):
            shutil.rmtree(self.directory / before.session, ignore_errors=True)
        self._save()
        return before.session

    def _claimed(self, old: Exported) -> bool:
        return any(e is not old and e.session == old.session for e in self.studies.values())

    def _swap_in(self, new: Path, target: Path) -> bool:
        """The new folder in the target's place; the old one goes only once it is out."""
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.replace(new, target)
            return False
        old = new.with_name(f"{new.name}.old")
        os.replace(target, old)
        try:
            os.replace(new, target)
        except OSError:
            os.replace(old, target)
            raise
        shutil.rmtree(old)
        return True

    def _merge_participants(self, incoming: Path) -> None:
        if not incoming.is_file():
            return
        header, rows = _read_tsv(self.directory / PARTICIPANTS)
        new_header, new_rows = _read_tsv(incoming)
        header += [column for column in new_header if column not in header]
        rows.update(new_rows)
        lines = ["\t".join(header)]
        for participant in sorted(rows):
            values = rows[participant]
            lines.append("\t".join(values.get(column, "n/a") for column in header))
        _write(self.directory / PARTICIPANTS, "\n".join(lines) + "\n")

    def _save(self) -> None:
        state = {
            "lab": self.lab,
            "studies": {
                uid: {"session": e.session, "etag": e.etag}
                for uid, e in sorted(self.studies.items())
            },
        }
        _write(self.directory / STATE_FILE, json.dumps(state, indent=2) + "\n")


def _session_of(unpacked: Path) -> str:
    """The one ``sub-S/ses-T`` a session ZIP holds."""
    sessions = [
        PurePosixPath(subject.name, session.name).as_posix()
        for subject in unpacked.glob("sub-*")
        if subject.is_dir()
        for session in subject.glob("ses-*")
        if session.is_dir()
    ]
    if len(sessions) != 1:
        raise ExportError(f"the session's ZIP holds {len(sessions)} sessions, not one")
    return sessions[0]


def _read_tsv(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A participants table: its columns, and each row by participant_id."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return ["participant_id"], {}
    if not lines or lines[0].split("\t")[0] != "participant_id":
        raise ExportError(f"{path} does not begin with a participant_id column")
    header = lines[0].split("\t")
    rows = {}
    for line in lines[1:]:
        if line.strip():
            values = dict(zip(header, line.split("\t"), strict=False))
            rows[values["participant_id"]] = values
    return header, rows


def _write(path: Path, text: str) -> None:
    """Replace `path` whole: a reader never sees a part of it."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)

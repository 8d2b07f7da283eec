"""Each lab's BIDS dataset on disk, kept one session at a time.

`<archive>/<lab>/bids` (or `<DCMDB_BIDS_DIR>/<lab>`) holds dataset_description.json, README,
participants.tsv and `sub-S/ses-T/` per study, each NIfTI (and .bval/.bvec) a hard link to
the archive's file, or a symbolic link where the two are on different filesystems: never a
copy. Sidecars and tables are written, as they differ from the converter's. Series without a
BIDS name are listed, with the reason, in `sourcedata/dcmdb/sub-S_ses-T_leftovers.tsv`.

A change touches one session and the participants table: never a scan of the whole dataset.
Writers of one lab's dataset take turns (a lock on its folder); each file is replaced
atomically, so a reader sees the old or the new one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.bids import pseudonyms
from shared.bids.pseudonyms import Pseudonym
from shared.bids.session import Leftover, SessionPlan
from shared.share import LabFolders, make_archive_root, make_folder, settle_file

RULES_FILE = "code/dcmdb-rules.json"
LEFTOVERS_FOLDER = "sourcedata/dcmdb"
BIDS_VERSION = "1.9.0"
BIDS_FOLDER = "bids"  # in a lab's folder of the archive, where DCMDB_BIDS_DIR is unset


@dataclass(frozen=True)
class SessionPlace:
    lab: str
    root: Path  # the lab's dataset
    subject: str  # without "sub-"
    session: str  # without "ses-"

    @property
    def folder(self) -> Path:
        return self.root / f"sub-{self.subject}" / f"ses-{self.session}"

    @property
    def leftovers(self) -> Path:
        return self.root / LEFTOVERS_FOLDER / f"sub-{self.subject}_ses-{self.session}_leftovers.tsv"


def dataset_root(archive: Path, bids_dir: Path | None, lab: str) -> Path:
    return bids_dir / lab if bids_dir is not None else archive / lab / BIDS_FOLDER


def make_dataset(archive: Path, bids_dir: Path | None, lab: str, keys_file: Path) -> Path:
    """The lab's dataset folder, made where missing as the sorter makes a lab folder: in
    the lab's group (the keys file says which), so that the share opens it to that lab alone,
    under DCMDB_BIDS_DIR as in the archive."""
    root = dataset_root(archive, bids_dir, lab)
    if bids_dir is not None:
        make_archive_root(bids_dir)  # as the archive's root: an existing one left as it is
    LabFolders(bids_dir if bids_dir is not None else archive, keys_file).make(root)
    return root


def place(archive: Path, bids_dir: Path | None, pseudonym: Pseudonym) -> SessionPlace:
    root = dataset_root(archive, bids_dir, pseudonym.lab)
    return SessionPlace(pseudonym.lab, root, pseudonym.subject, pseudonym.session)


def place_of(
    session: Session, archive: Path, bids_dir: Path | None, study_uid: str
) -> SessionPlace | None:
    """Where the study's session is; None where it has none (nothing of it named yet)."""
    found = pseudonyms.existing(session, study_uid)
    if found is None:
        return None
    spot = place(archive, bids_dir, found)
    return spot if spot.folder.is_dir() else None


def session_members(spot: SessionPlace) -> list[tuple[str, Path | bytes]]:
    """The session as a dataset of its own (a ZIP's members): the dataset's description and
    README, the subject's row of participants.tsv, and the session folder."""
    members: list[tuple[str, Path | bytes]] = [
        (name, spot.root / name)
        for name in ("dataset_description.json", "README")
        if (spot.root / name).is_file()
    ]
    members.append(("participants.tsv", _tsv(["participant_id"], [[f"sub-{spot.subject}"]])))
    members += [
        (path.relative_to(spot.root).as_posix(), path.resolve())
        for path in sorted(_files_under(spot.folder))
    ]
    return members


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """The lab's dataset (made already: `make_dataset`), for one writer at a time
    (converters of several hosts included)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # and with it the lock


def write_session(spot: SessionPlace, plan: SessionPlan, archive: Path) -> None:
    """Make the session folder hold what `plan` says, and nothing else."""
    _describe(spot)
    wanted = _wanted(spot, plan, archive)
    if plan.files:
        make_folder(spot.folder)
        for path in _files_under(spot.folder):
            if path.relative_to(spot.folder).as_posix() not in wanted:
                path.unlink()
        for relative, source in wanted.items():
            target = spot.folder / relative
            make_folder(target.parent)
            if isinstance(source, bytes):
                _write(target, source)
            else:
                _link(source, target)
        _remove_empty_folders(spot.folder)
    else:
        remove_session(spot)
    _write_leftovers(spot, plan.leftovers)
    write_participants(spot.root)


def remove_study(archive: Path, bids_dir: Path | None, pseudonym: Pseudonym) -> SessionPlace | None:
    """The study's session out of its lab's dataset, and participants.tsv written again; None
    where the lab has no dataset. Its labels stay, for the study fetched again."""
    spot = place(archive, bids_dir, pseudonym)
    if not spot.root.is_dir():
        return None
    with locked(spot.root):
        remove_session(spot)
        write_participants(spot.root)
    return spot


def remove_session(spot: SessionPlace) -> None:
    """The session's folder goes, and its subject's where it was the last."""
    shutil.rmtree(spot.folder, ignore_errors=True)
    spot.leftovers.unlink(missing_ok=True)
    subject = spot.folder.parent
    if subject.is_dir() and not any(subject.iterdir()):
        subject.rmdir()


def write_participants(root: Path) -> None:
    """participants.tsv: one row per subject folder, its label only."""
    subjects = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    _write(root / "participants.tsv", _tsv(["participant_id"], [[s] for s in subjects]))


def _wanted(spot: SessionPlace, plan: SessionPlan, archive: Path) -> dict[str, Path | bytes]:
    wanted: dict[str, Path | bytes] = {}
    for file in plan.files:
        base = f"{file.name.datatype}/{file.name.stem(spot.subject, spot.session)}"
        wanted[f"{base}.nii.gz"] = archive / file.nifti
        wanted[f"{base}.json"] = _json(file.sidecar)
        if file.bval and file.bvec:
            wanted[f"{base}.bval"] = archive / file.bval
            wanted[f"{base}.bvec"] = archive / file.bvec
    names = sorted(k for k in wanted if k.endswith(".nii.gz"))
    columns = ["filename", "acq_time"] if plan.acquired else ["filename"]
    rows = [[n, plan.acquired.get(n, "n/a")][: len(columns)] for n in names]
    wanted[f"sub-{spot.subject}_ses-{spot.session}_scans.tsv"] = _tsv(columns, rows)
    return wanted


def _describe(spot: SessionPlace) -> None:
    description = spot.root / "dataset_description.json"
    if not description.exists():
        _write(
            description,
            _json(
                {
                    "Name": "Studies received by dcmdb",
                    "BIDSVersion": BIDS_VERSION,
                    "DatasetType": "raw",
                    "GeneratedBy": [
                        {"Name": "dcmdb", "Description": "kept as each series converts"}
                    ],
                }
            ),
        )
    readme = spot.root / "README"
    if not readme.exists():
        _write(
            readme,
            (
                "A lab's BIDS dataset, kept by dcmdb as its studies arrive.\n"
                "Subjects and sessions are pseudonyms; series without a BIDS name are listed,\n"
                f"with the reason, in {LEFTOVERS_FOLDER}/. Name rules: {RULES_FILE}.\n"
            ).encode(),
        )


def _write_leftovers(spot: SessionPlace, leftovers: list[Leftover]) -> None:
    if not leftovers:
        spot.leftovers.unlink(missing_ok=True)
        return
    make_folder(spot.leftovers.parent)
    rows = [
        [str(x.series_number if x.series_number is not None else "n/a"), x.description, x.reason]
        for x in leftovers
    ]
    _write(spot.leftovers, _tsv(["series_number", "series_description", "reason"], rows))


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_symlink() or p.is_file()]


def _remove_empty_folders(folder: Path) -> None:
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()


def _link(source: Path, target: Path) -> None:
    """`target` a hard link to `source` (a symbolic one across filesystems), unless it is one."""
    try:
        if target.is_symlink():
            if os.readlink(target) == os.path.relpath(source, target.parent):
                return
        elif os.path.samestat(os.stat(target), os.stat(source)):
            return
    except FileNotFoundError:
        pass
    temporary = _temporary(target)
    try:
        os.link(source, temporary)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM):
            raise
        os.symlink(os.path.relpath(source, target.parent), temporary)
    os.replace(temporary, target)


def _write(path: Path, data: bytes) -> None:
    """`path` holds `data`, replaced atomically where it held something else. Not synced: the
    dataset is made again from the catalog and the archive."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    temporary = _temporary(path)
    temporary.write_bytes(data)
    settle_file(temporary)
    os.replace(temporary, path)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _tsv(columns: list[str], rows: list[list[str]]) -> bytes:
    def cell(value: str) -> str:
        return value.replace("\t", " ").replace("\n", " ") or "n/a"

    lines = ["\t".join(columns), *("\t".join(cell(v) for v in row) for row in rows)]
    return ("\n".join(lines) + "\n").encode()

"""Give the lab folders their Unix groups and modes.

Sets the group of every lab folder and of everything under it to its lab's group (the keys
file's groups: entry, else dcmdb-FOLDER), folders to 2750 and files to 0640, as dcmdb writes
them now: run it once on an archive written before, and again after creating a lab's
group. It lists each lab folder with its group and whether that group exists; a folder
whose group is missing gets the modes and keeps its group. Run it as root, or as the
services' user when that user is in every lab's group. Exits 1, saying what it could not
do, when a group is missing or a path could not be changed.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from services.commands.parsing import command_parser
from shared import keys
from shared.settings import CommonSettings, load_settings
from shared.share import FILE_MODE, FOLDER_MODE, ROOT_MODE, apply


@dataclass
class _Lab:
    folder: Path
    group: str
    status: str = "exists"  # the group: exists, created, missing
    changed: int = 0
    problems: list[str] = field(default_factory=list)


def main(argv: list[str]) -> None:
    parser = command_parser("dcmdb share", __doc__)  # the docstring is its --help
    parser.add_argument(
        "--create-groups", action="store_true", help="create the missing groups (needs root)"
    )
    args = parser.parse_args(argv)
    if args.create_groups and os.geteuid() != 0:
        parser.error("--create-groups runs groupadd, which needs root")
    settings = load_settings(CommonSettings)
    root = settings.archive_root
    if not root.is_dir():
        sys.exit(f"dcmdb share: there is no archive at {root}")
    document = keys.load(settings.keys_path)
    problems = _settle_root(root)
    labs = [_Lab(f, keys.lab_group(document, f.name)) for f in lab_folders(root)]
    for lab in labs:
        _share(lab, args.create_groups)
        problems += lab.problems
    _print(labs)
    if problems:
        for problem in problems:
            print(f"dcmdb share: {problem}", file=sys.stderr)
        sys.exit(1)


def lab_folders(root: Path) -> list[Path]:
    """The archive's lab folders; dot names are dcmdb's own (evictions, a lab folder being
    made)."""
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and stat.S_ISDIR(_mode(p))
    )


def _mode(path: Path) -> int:
    return os.lstat(path).st_mode


def _settle_root(root: Path) -> list[str]:
    problems = []
    try:
        apply(root, None, ROOT_MODE)
    except OSError as exc:
        problems.append(f"{root}: cannot make it {ROOT_MODE:o}: {exc.strerror}")
    for parent in root.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            problems.append(f"{parent} is closed to the labs' users: chmod o+x {parent}")
    return problems


def _share(lab: _Lab, create: bool) -> None:
    gid = _gid(lab.group)
    if gid is None and create:
        gid = _create_group(lab)
    if gid is None:
        lab.status = "missing"
        if not create:
            lab.problems.append(
                f"{lab.folder.name}: the group {lab.group} does not exist; create it "
                f"(groupadd {lab.group}, or dcmdb share --create-groups) and run dcmdb share "
                "again. Its folder keeps its group, with the modes set"
            )
    for current, folders, files in os.walk(lab.folder):
        here = Path(current)
        _apply(lab, here, gid, FOLDER_MODE)
        for name in folders:  # os.walk lists a symlink to a folder here, and never enters it
            if os.path.islink(here / name):
                lab.problems.append(f"{here / name}: a symbolic link, left as it is")
        for name in files:
            path = here / name
            if os.path.islink(path):
                lab.problems.append(f"{path}: a symbolic link, left as it is")
            else:
                _apply(lab, path, gid, FILE_MODE)


def _apply(lab: _Lab, path: Path, gid: int | None, mode: int) -> None:
    try:
        lab.changed += apply(path, gid, mode)
    except OSError as exc:
        lab.problems.append(f"{path}: {exc.strerror}")


def _gid(group: str) -> int | None:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _create_group(lab: _Lab) -> int | None:
    groupadd = shutil.which("groupadd") or shutil.which("groupadd", path="/usr/sbin:/sbin")
    if groupadd is None:
        lab.problems.append(f"cannot create {lab.group}: groupadd is not installed")
        return None
    result = subprocess.run([groupadd, lab.group], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lab.problems.append(f"groupadd {lab.group} failed: {result.stderr.strip()}")
        return None
    lab.status = "created"
    return _gid(lab.group)


def _print(labs: list[_Lab]) -> None:
    if not labs:
        print("no lab folder in the archive")
        return
    rows = [("LAB FOLDER", "GROUP", "GROUP IS", "CHANGED")]
    rows += [(lab.folder.name, lab.group, lab.status, str(lab.changed)) for lab in labs]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for *cells, changed in rows:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)), changed, sep="  ")

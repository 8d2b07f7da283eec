"""Add, list or remove the labs' DICOM desktops.

A desktop is a lab's Horos, OsiriX or script, or a second dcmdb.

dcmdb desktops add AETITLE --host HOST --port PORT --lab FOLDER [--lab FOLDER ...] lets the
desktop with that calling AE title, at that host, find and retrieve those labs' studies
(--all-labs: every lab); a C-MOVE to AETITLE sends them to HOST:PORT. dcmdb desktops list
shows them, dcmdb desktops remove AETITLE ends one.

For an admin on the dcmdb host: it edits the keys file (DCMDB_KEYS_FILE, default
<data dir>/keys.yaml) directly; a running receiver reads it again by itself.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from pydantic import ValidationError

from services.commands.parsing import command_parser
from services.commands.terminal import table
from shared import keys
from shared.settings import CommonSettings, load_settings

_WHAT_FITS = {
    "ae_title": "AETITLE: 1 to 16 printable ASCII characters without a backslash",
    "host": "--host: a host name or address",
    "port": "--port: a port between 1 and 65535",
    "labs": "--lab: a lab folder's name: up to 128 letters, digits and _ . -",
}


def main(argv: list[str]) -> None:
    parser = command_parser("dcmdb desktops", __doc__)  # the docstring is its --help
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="let a desktop query and retrieve its labs' studies")
    add.add_argument("ae_title", metavar="AETITLE", help="the desktop's own (calling) AE title")
    add.add_argument("--host", required=True, help="where it connects from, and listens")
    add.add_argument("--port", required=True, type=int, help="where it listens for C-MOVE")
    labs = add.add_mutually_exclusive_group(required=True)
    labs.add_argument(
        "--lab", action="append", metavar="FOLDER", help="a lab folder it sees, e.g. SMITH_JOHN"
    )
    labs.add_argument("--all-labs", action="store_true", help="it sees every lab")
    actions.add_parser("list", help="the desktops: AE title, host, port, labs")
    remove = actions.add_parser("remove", help="remove a desktop; it is refused at once")
    remove.add_argument("ae_title", metavar="AETITLE")
    args = parser.parse_args(argv)

    path = load_settings(CommonSettings).keys_path
    if args.action == "add":
        try:
            entry = keys.DesktopEntry(
                ae_title=args.ae_title.strip(),
                host=args.host,
                port=args.port,
                labs="all" if args.all_labs else tuple(dict.fromkeys(args.lab)),
                created=dt.datetime.now(dt.UTC).replace(microsecond=0),
            )
        except ValidationError as exc:
            parser.error(_WHAT_FITS[str(exc.errors()[0]["loc"][0])])
        with keys.editing(path) as document:
            if document.desktop(entry.ae_title) is not None:
                parser.error(f"a desktop {entry.ae_title!r} exists: remove it first")
            document.desktops.append(entry)
        print(f"desktop {entry.ae_title!r} added to {path}", file=sys.stderr)
    elif args.action == "list":
        _list(keys.load(path), path)
    else:
        _remove(path, args.ae_title.strip())


def _list(document: keys.KeysDocument, path: Path) -> None:
    rows = [
        [
            entry.ae_title,
            f"{entry.host}:{entry.port}",
            "all" if entry.labs == "all" else " ".join(entry.labs),
            entry.created.strftime("%Y-%m-%d %H:%M") if entry.created else "",
        ]
        for entry in document.desktops
    ]
    columns = (("AETITLE", None, False), ("ADDRESS", None, False), ("LABS", 60, False))
    print(table(rows, (*columns, ("CREATED", None, False))))
    print(f"{len(rows)} desktops in {path}", file=sys.stderr)


def _remove(path: Path, ae_title: str) -> None:
    with keys.editing(path) as document:
        entry = document.desktop(ae_title)
        if entry is not None:
            document.desktops.remove(entry)
    if entry is None:
        print(f"dcmdb desktops: no desktop {ae_title!r} in {path}", file=sys.stderr)
        sys.exit(1)
    print(f"desktop {ae_title!r} removed", file=sys.stderr)

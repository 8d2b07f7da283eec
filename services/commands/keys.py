"""Add, list or revoke API keys and their labs.

dcmdb keys add NAME --scope read --lab FOLDER [--lab FOLDER ...] creates a key that sees
those lab folders (--all-labs: every lab) and prints it once: only its SHA-256 digest is
kept. dcmdb keys list shows the keys, dcmdb keys revoke NAME ends one at once.

For an admin on the dcmdb host: it edits the keys file (DCMDB_KEYS_FILE, default
<data dir>/keys.yaml) directly; a running API reads it again by itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from pydantic import ValidationError

from services.commands.parsing import command_parser
from services.commands.terminal import table
from shared import keys
from shared.settings import CommonSettings, load_settings


def main(argv: list[str]) -> None:
    parser = command_parser("dcmdb keys", __doc__)  # the docstring is its --help
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create a key and print it once")
    add.add_argument("name", help="who holds it, e.g. smith-lab or prometheus")
    add.add_argument("--scope", choices=[s.value for s in keys.Scope], required=True)
    labs = add.add_mutually_exclusive_group(required=True)
    labs.add_argument(
        "--lab", action="append", metavar="FOLDER", help="a lab folder it sees, e.g. SMITH_JOHN"
    )
    labs.add_argument("--all-labs", action="store_true", help="it sees every lab")
    actions.add_parser("list", help="the keys: name, scope, labs, created")
    revoke = actions.add_parser("revoke", help="remove a key; its sessions end at once")
    revoke.add_argument("name")
    args = parser.parse_args(argv)

    settings = load_settings(CommonSettings)
    path = settings.keys_path
    if args.action == "add":
        _add(parser, path, settings.archive_root, args)
    elif args.action == "list":
        _list(path)
    else:
        _revoke(path, args.name)


def _add(
    parser: argparse.ArgumentParser, path: Path, archive: Path, args: argparse.Namespace
) -> None:
    key = keys.new_key()
    try:
        entry = keys.KeyEntry(
            name=args.name,
            scope=args.scope,
            labs="all" if args.all_labs else tuple(dict.fromkeys(args.lab)),
            sha256=keys.digest(key),
            created=dt.datetime.now(dt.UTC).replace(microsecond=0),
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        if not problem["loc"]:  # the entry as a whole: an admin key of some labs
            parser.error(f"--scope admin: {problem['msg'].removeprefix('Value error, ')}")
        field = "NAME" if problem["loc"][0] == "name" else "--lab"
        parser.error(f"{field}: {_what_fits(field)}")
    with keys.editing(path) as document:
        if document.named(args.name) is not None:
            parser.error(f"a key named {args.name!r} exists: revoke it first")
        document.keys.append(entry)
    for lab in args.lab or ():
        if not (archive / lab).is_dir():
            print(f"note: no lab folder {lab} in {archive} yet", file=sys.stderr)
    print(key)
    print(f"key {args.name!r} added to {path}; it is shown only this once", file=sys.stderr)


def _what_fits(field: str) -> str:
    if field == "NAME":
        return "up to 64 letters, digits and _ . @ -, starting with a letter or digit"
    return "a lab folder's name: up to 128 letters, digits and _ . -"


def _list(path: Path) -> None:
    document = keys.load(path)
    rows = [
        [
            entry.name,
            entry.scope.value,
            "all" if entry.labs == "all" else " ".join(entry.labs),
            entry.created.strftime("%Y-%m-%d %H:%M") if entry.created else "",
        ]
        for entry in document.keys
    ]
    columns = (
        ("NAME", None, False),
        ("SCOPE", None, False),
        ("LABS", 60, False),
        ("CREATED", None, False),
    )
    print(table(rows, columns))
    print(f"{len(rows)} keys in {path}", file=sys.stderr)


def _revoke(path: Path, name: str) -> None:
    with keys.editing(path) as document:
        entry = document.named(name)
        if entry is not None:
            document.keys.remove(entry)
    if entry is None:
        print(f"dcmdb keys: no key named {name!r} in {path}", file=sys.stderr)
        sys.exit(1)
    print(f"key {name!r} revoked", file=sys.stderr)

"""Export a lab's BIDS dataset, or show and set its naming rules.

dcmdb bids export --physician LAB -o DIR [--since YYYY-MM-DD] writes the lab's sessions
into DIR, or brings DIR up to date: a session exported before and unchanged since is not
downloaded again, a changed one replaces its folder, and one dcmdb no longer has leaves
DIR. Studies without a BIDS session yet are named, and left for a later run.

dcmdb bids rules --physician LAB [--set FILE] shows the lab's rules, or replaces them with
those of FILE (JSON); the lab's sessions are then named again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from services.api.bids_client import BidsClient
from services.api.client import ApiError, StudyQuery
from services.commands.api_connection import connected, connection_options, fail, reporting
from services.commands.bids_export import ExportedDataset, ExportError
from services.commands.parsing import command_parser

PAGE = 200
_NO_SESSION = "has no BIDS session"


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if args.action == "export":
        _export(args)
    else:
        _rules(args)


def _export(args: argparse.Namespace) -> None:
    since: str | None = args.since.isoformat() if args.since else None
    counts = {"added": 0, "updated": 0, "unchanged": 0, "removed": 0, "without BIDS": 0}
    with reporting("bids export"), connected("bids export", args, BidsClient) as client:
        try:
            dataset = ExportedDataset.open(args.output, args.physician)
        except ExportError as exc:
            fail("bids export", str(exc))
        query: StudyQuery = {"physician": args.physician, "limit": PAGE, "order": "asc"}
        if since is not None:
            query["received_since"] = since
        for study in client.iter_studies(**query):
            uid = study.study_uid
            try:
                with client.bids_session(uid, args.output, etag=dataset.etag(uid)) as got:
                    if got is None:
                        counts["unchanged"] += 1
                        continue
                    replaced = dataset.put(uid, got.archive, got.etag)
            except ApiError as exc:
                if exc.status != 404 or _NO_SESSION not in str(exc):
                    raise
                counts["without BIDS"] += 1
                print(f"without BIDS: study {uid}: {exc.detail}")
                if (dropped := dataset.drop(uid)) is not None:
                    counts["removed"] += 1
                    print(f"removed: {dropped} (study {uid}), which dcmdb no longer has")
                continue
            except ExportError as exc:
                fail("bids export", f"study {uid}: {exc}")
            done = "updated" if replaced else "added"
            counts[done] += 1
            print(f"{done}: {dataset.studies[uid].session} (study {uid})")
    summary = ", ".join(f"{count} {what}" for what, count in counts.items())
    print(f"sessions in {args.output}: {summary}")


def _rules(args: argparse.Namespace) -> None:
    rules = None
    if args.set is not None:
        try:
            rules = json.loads(args.set.read_text(encoding="utf-8"))
        except OSError as exc:
            fail("bids rules", f"{exc.strerror}: {args.set}")
        except ValueError as exc:
            fail("bids rules", f"{args.set} is not JSON: {exc}")
    with reporting("bids rules"), connected("bids rules", args, BidsClient) as client:
        if rules is None:
            shown = client.bids_rules(args.physician)
        else:
            shown = client.set_bids_rules(args.physician, rules)
    json.dump(shown, sys.stdout, indent=2, ensure_ascii=False)
    print()


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = command_parser("dcmdb bids", __doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write or update the lab's dataset in DIR")
    export.add_argument("--physician", required=True, metavar="LAB", help="the lab's folder")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    export.add_argument(
        "--since", type=_day, metavar="YYYY-MM-DD", help="only studies received since that day"
    )
    connection_options(export)
    rules = actions.add_parser("rules", help="show the lab's naming rules, or --set them")
    rules.add_argument("--physician", required=True, metavar="LAB", help="the lab's folder")
    rules.add_argument("--set", type=Path, metavar="FILE", help="replace them with FILE's")
    connection_options(rules)
    return parser

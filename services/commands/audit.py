"""Show who read or changed what, and when.

The API's audit trail, newest first, as a table (times in UTC) or (--json) one JSON
object a line. Each line is one answer of the API: the key's name, the action, the HTTP
status, the bytes sent, the client's address, and the study, series or retrieval job.
Needs an admin key.
"""

from __future__ import annotations

import argparse

from services.api.schemas import AuditEntry
from services.commands.api_connection import client_for, connection_options, reporting
from services.commands.paging import Pages, show
from services.commands.parsing import command_parser, count, iso_time
from services.commands.terminal import human_size
from shared.catalog.states import AuditAction

PAGE_LIMIT = 1000  # the most records the API gives in one page
_COLUMNS = (
    # header, width limit (None: as wide as the widest value), right-aligned
    ("TIME (UTC)", None, False),
    ("KEY", None, False),
    ("ACTION", None, False),
    ("STATUS", None, True),
    ("SENT", None, True),
    ("CLIENT", None, False),
    ("STUDY UID", None, False),
    ("SERIES UID / JOB", None, False),
)


def audit(argv: list[str]) -> None:
    args = _audit_parser().parse_args(argv)
    filters: dict[str, str | int] = {
        name: value
        for name, value in (
            ("key_name", args.key_name),
            ("action", args.action),
            ("study_uid", args.study),
            ("since", args.since),
            ("until", args.until),
        )
        if value is not None
    }
    with reporting("audit"), client_for("audit", args) as client:

        def page(size: int, before: int | None) -> tuple[list[AuditEntry], int | None]:
            asked = {**filters, "limit": size, **({"before": before} if before else {})}
            found = client.audit(**asked)
            return found.items, found.next

        shown = Pages(page, args.limit, PAGE_LIMIT)
        show(shown, json_lines=args.json, row=_row, columns=_COLUMNS, nothing="no record matches")


def _row(entry: AuditEntry) -> list[str]:
    job = f"job {entry.job_id}" if entry.job_id is not None else None
    return [
        entry.at.strftime("%Y-%m-%d %H:%M:%S"),
        entry.key_name,
        entry.action,
        str(entry.status),
        human_size(entry.bytes_sent),
        entry.client or "-",
        entry.study_uid or "-",
        entry.series_uid or job or "-",
    ]


def _audit_parser() -> argparse.ArgumentParser:
    parser = command_parser("dcmdb audit", __doc__)  # the docstring is its --help
    parser.add_argument("--key-name", metavar="NAME", help="only what this API key did")
    parser.add_argument(
        "--action",
        choices=[str(a) for a in AuditAction],
        metavar="ACTION",
        help=f"only this action: {', '.join(AuditAction)}",
    )
    parser.add_argument("--study", metavar="UID", help="only what concerned this study")
    parser.add_argument(
        "--since", type=iso_time, metavar="ISO", help="at or after this time (naive: UTC)"
    )
    parser.add_argument("--until", type=iso_time, metavar="ISO", help="before this time")
    parser.add_argument(
        "--limit", type=count, default=50, metavar="N", help="show N (default 50; 0: all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    connection_options(parser)
    return parser

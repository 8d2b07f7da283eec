"""Convert series to NIfTI again.

Selects complete series by study, series, physician folder or study date range (every
criterion given must hold) and queues them: the converter converts each again and replaces
its files. --dry-run lists what would be queued. For an admin on the dcmdb host: it reads
and writes the catalog (DCMDB_CATALOG_URL) directly, so it needs the host's settings, not
an API key.
"""

from __future__ import annotations

import sys

from services.api.parameters import date_range
from services.commands.parsing import command_parser
from shared.catalog.database import open_catalog
from shared.reconversion import Selection, reconvert
from shared.settings import CommonSettings, load_settings


def main(argv: list[str]) -> None:
    parser = command_parser("dcmdb reconvert", __doc__)  # the docstring is its --help
    parser.add_argument("--study", metavar="UID", help="a StudyInstanceUID")
    parser.add_argument("--series", metavar="UID", help="a SeriesInstanceUID")
    parser.add_argument("--physician", metavar="FOLDER", help="a lab folder, e.g. SMITH_JOHN")
    parser.add_argument(
        "--date", metavar="RANGE", help="StudyDate: YYYYMMDD, A-B, A-, -B, today, yesterday"
    )
    parser.add_argument("--dry-run", action="store_true", help="list, queue nothing")
    args = parser.parse_args(argv)
    if not any((args.study, args.series, args.physician, args.date)):
        parser.error("name what to convert again: --study, --series, --physician or --date")
    first = last = None
    if args.date:
        try:
            days = date_range(args.date)
        except ValueError as exc:
            parser.error(f"--date: {exc}")
        first, last = days.first, days.last
    selection = Selection(args.study, args.series, args.physician, first, last)
    settings = load_settings(CommonSettings)
    engine, sessions = open_catalog(settings.catalog_url, writer=not args.dry_run)
    try:
        queued = reconvert(sessions, selection, dry_run=args.dry_run)
    finally:
        engine.dispose()
    verb = "would convert again" if args.dry_run else "queued"
    for item in queued:
        print(f"{verb}: {item.folder} (was {item.was}) {item.series_uid}")
    print(f"{len(queued)} series {verb}", file=sys.stderr)

"""Find what the PACS lacks of the scanners' studies.

Compares the scanners with the PACS now: asks each scanner (role: scanner in
DCMDB_PACS_FILE), or only --scanner, for its studies of the last --days days (default:
each scanner's keeps_days), and the PACS for the same studies; records what the PACS
lacks in the catalog, and prints it with the day the scanner deletes each study. A
scanner or PACS that could not be asked is printed with the reason. Exit status: 0 when
the PACS holds everything, 1 on an error, 3 when something is missing or could not be
checked. For an admin on the dcmdb host: it reads the host's settings
(DCMDB_DATABASE_URL, DCMDB_PACS_FILE, DCMDB_RESCUE) directly, not an API key.
"""

from __future__ import annotations

import sys

from services.commands.parsing import command_parser
from services.commands.terminal import table
from shared.catalog.database import open_catalog
from shared.catalog.reconciliation import Difference, ReconciliationRun
from shared.catalog.states import CheckState
from shared.reconciliation import ReconcileSettings, reconcile_scanner
from shared.reconciliation_report import Filters, differences, latest_runs, not_closed
from shared.settings import load_settings

MISSING = 3
_COLUMNS = (
    ("ID", None, True),
    ("SCANNER", None, False),
    ("LAB", 24, False),
    ("STUDY DATE", None, False),
    ("DEADLINE", None, False),
    ("DIFFERENCE", None, False),
    ("SCANNER #", None, True),
    ("PACS #", None, True),
    ("STATE", None, False),
    ("STUDY UID", None, False),
    ("SERIES UID", None, False),
)


def main(argv: list[str]) -> None:
    parser = command_parser("dcmdb reconcile", __doc__)  # the docstring is its --help
    parser.add_argument("--scanner", metavar="NAME", help="only this scanner")
    parser.add_argument("--days", type=int, metavar="N", help="studies of the last N days")
    args = parser.parse_args(argv)
    if args.days is not None and not 1 <= args.days <= 3650:
        parser.error("--days: between 1 and 3650")
    settings = load_settings(ReconcileSettings)
    try:
        scanners = [settings.scanner(args.scanner)] if args.scanner else settings.scanners
    except ValueError as exc:
        parser.error(str(exc))
    if not scanners:
        parser.error("no scanner is configured: add role: scanner entries to DCMDB_PACS_FILE")
    engine, sessions = open_catalog(settings.catalog_url, writer=True)
    try:
        for scanner in scanners:
            reconcile_scanner(settings, sessions, scanner, days=args.days)
        with sessions() as session:
            runs = [run for s in scanners for run in latest_runs(session, s.name)]
            rows = [
                row
                for s in scanners
                for row in not_closed(differences(session, Filters(scanner=s.name)))
            ]
            print(report(runs, rows))
    finally:
        engine.dispose()
    if rows or any(run.state != CheckState.CHECKED for run in runs):
        sys.exit(MISSING)


def report(runs: list[ReconciliationRun], rows: list[Difference]) -> str:
    lines = []
    for run in runs:
        if run.state == CheckState.CHECKED:
            lines.append(
                f"scanner {run.scanner}: {run.studies} studies of {run.first_day} to "
                f"{run.last_day} checked against {run.pacs}, {run.missing} difference(s) open"
            )
        else:
            lines.append(f"scanner {run.scanner}: NOT CHECKED: {run.reason}")
    cells = [
        [
            str(row.id),
            row.scanner,
            row.lab,
            str(row.study_date),
            str(row.deadline),
            str(row.kind),
            str(row.scanner_instances),
            str(row.pacs_instances),
            str(row.state),
            row.study_uid,
            row.series_uid or "(all)",
        ]
        for row in rows
    ]
    if cells:
        lines.append(table(cells, _COLUMNS))
    return "\n".join(lines)

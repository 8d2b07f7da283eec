"""List the studies the API finds.

Newest received first, as a table or (--json) one JSON object a line.
"""

from __future__ import annotations

import argparse

from services.api.client import StudyQuery
from services.api.schemas import StudySummary
from services.commands.api_connection import client_for, connection_options, reporting
from services.commands.paging import Pages, show
from services.commands.parsing import command_parser, count, iso_time
from services.commands.terminal import human_size

PAGE_LIMIT = 1000  # the most studies the API gives in one page
_COLUMNS = (
    # header, width limit (None: as wide as the widest value), right-aligned
    ("DATE", None, False),
    ("PHYSICIAN", None, False),
    ("PATIENT", 28, False),
    ("MODALITIES", 16, False),
    ("SERIES", None, True),
    ("INSTANCES", None, True),
    ("SIZE", None, True),
    ("DESCRIPTION", 36, False),
    ("STUDY UID", None, False),
)


def studies(argv: list[str]) -> None:
    args = _studies_parser().parse_args(argv)
    query: StudyQuery = {"sort": args.sort, "order": args.order}
    for name, value in (
        ("physician", args.physician),
        ("study_date", args.date),
        ("patient_id", args.patient_id),
        ("patient_name", args.patient_name),
        ("modality", args.modality),
        ("accession_number", args.accession),
        ("description", args.description),
        ("received_since", args.since),
    ):
        if value is not None:
            query[name] = value  # type: ignore[literal-required]
    with reporting("studies"), client_for("studies", args) as client:

        def page(size: int, cursor: str | None) -> tuple[list[StudySummary], str | None]:
            asked: StudyQuery = {**query, "limit": size}
            if cursor is not None:
                asked["cursor"] = cursor
            found = client.studies(**asked)
            return found.items, found.next

        listing = Pages(page, args.limit, PAGE_LIMIT)
        show(listing, json_lines=args.json, row=_row, columns=_COLUMNS, nothing="no study matches")


def _row(study: StudySummary) -> list[str]:
    day = study.study_date or ""
    return [
        f"{day[:4]}-{day[4:6]}-{day[6:]}" if len(day) == 8 else day or "-",
        study.physician_folder,
        study.patient_name or "-",
        ",".join(study.modalities) or "-",
        str(study.series_count),
        str(study.instance_count),
        human_size(study.size_bytes),
        study.description or "-",
        study.study_uid,
    ]


def _studies_parser() -> argparse.ArgumentParser:
    parser = command_parser("dcmdb studies", __doc__)  # the docstring is its --help
    parser.add_argument("--physician", help="lab folder (SMITH_JOHN) or name (Smith^John)")
    parser.add_argument(
        "--date",
        metavar="EXPR",
        help="study date: YYYYMMDD, YYYYMMDD-YYYYMMDD, YYYYMMDD-, -YYYYMMDD, today, yesterday",
    )
    parser.add_argument("--patient-id")
    parser.add_argument("--patient-name", help="DICOM name, * as wildcard: SMITH*")
    parser.add_argument("--modality", help="a modality of one of its series: MR, CT, ...")
    parser.add_argument("--accession", help="accession number")
    parser.add_argument("--description", help="a part of the study description, any case")
    parser.add_argument(
        "--since", type=iso_time, metavar="ISO", help="received at or after (naive: UTC)"
    )
    parser.add_argument("--sort", choices=("received", "study_date"), default="received")
    parser.add_argument("--order", choices=("desc", "asc"), default="desc")
    parser.add_argument(
        "--limit", type=count, default=50, metavar="N", help="show N (default 50; 0: all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    connection_options(parser)
    return parser

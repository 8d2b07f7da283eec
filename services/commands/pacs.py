"""dcmdb retrieve and dcmdb pacs-check: fetching studies from the PACS through the API,
and asking whether a study is complete."""

from __future__ import annotations

import argparse
import sys
import time

from services.api.client import Client
from services.api.schemas import PacsCheck, Retrieval
from services.commands.api_connection import client_for, connection_options, reporting
from services.commands.parsing import command_parser
from services.commands.terminal import table
from shared.catalog.states import JobState

INCOMPLETE = 3
_RETRIEVE_HELP = """Fetch studies from the PACS.

Queues a retrieval job (an admin key) and follows it until it ends, one line per change;
Ctrl-C stops following, not the job. Exit status: 0 when the job found everything, 1 on an
error, 3 when the job ended partial, failed or cancelled.
"""
_CHECK_HELP = """Compare a study with the PACS.

Counts each series' instances on the PACS and in dcmdb. Exit status: 0 when the study is
complete, 1 on an error, 3 when something is missing.
"""
_FOLLOW_EVERY = 1.0  # seconds


def retrieve(argv: list[str]) -> None:
    args = _retrieve_parser().parse_args(argv)
    query = {
        key: value
        for key, value in (
            ("study_date", args.date),
            ("modality", args.modality),
            ("patient_id", args.patient_id),
            ("accession_number", args.accession),
            ("study_uid", args.study_uid),
            ("referring_physician", args.physician),
        )
        if value is not None
    }
    if not query:
        _retrieve_parser().error("give at least one of --date, --modality, --patient-id, ...")
    with reporting("retrieve"), client_for("retrieve", args) as client:
        job = client.retrieve(pacs=args.pacs, **query)
        print(f"retrieval job {job.id} queued on {job.pacs}", file=sys.stderr)
        if args.no_wait:
            print(job.id)
            return
        try:
            job = _follow(client, job)
        except KeyboardInterrupt:
            print(
                f"\nno longer following; job {job.id} goes on (cancel it with "
                f"DELETE /retrievals/{job.id})",
                file=sys.stderr,
            )
            sys.exit(130)
    print(_summary(job))
    if job.state != JobState.COMPLETED:
        sys.exit(INCOMPLETE)


def _follow(client: Client, job: Retrieval) -> Retrieval:
    shown = ""
    while True:
        line = _progress(job)
        if line != shown:
            print(line, file=sys.stderr)
            shown = line
        if job.state.finished:
            return job
        time.sleep(_FOLLOW_EVERY)
        job = client.retrieval(job.id)


def _progress(job: Retrieval) -> str:
    studies = job.studies
    done = sum(s.state.finished for s in studies)
    moved = sum(s.completed for s in studies)
    expected = sum(s.expected_instances or 0 for s in studies)
    filed = sum(s.filed for s in studies)
    failed = sum(s.failed for s in studies)
    return (
        f"job {job.id} {job.state}: {done}/{len(studies)} studies, "
        f"{moved}/{expected} instances moved, {filed} filed"
        + (f", {failed} failed" if failed else "")
    )


def _summary(job: Retrieval) -> str:
    lines = [_progress(job)]
    for study in job.studies:
        reason = f" ({study.reason})" if study.reason else ""
        lines.append(f"  {study.study_uid}: {study.state}{reason}")
    if job.reason:
        lines.append(f"  {job.reason}")
    return "\n".join(lines)


def pacs_check(argv: list[str]) -> None:
    args = _check_parser().parse_args(argv)
    with reporting("pacs-check"), client_for("pacs-check", args) as client:
        check = client.pacs_check(args.study_uid, args.pacs)
    if args.json:
        print(check.model_dump_json())
    else:
        print(_check_table(check))
    if not check.complete:
        sys.exit(INCOMPLETE)


_CHECK_COLUMNS = (
    ("SERIES", None, True),
    ("MODALITY", None, False),
    ("DESCRIPTION", 36, False),
    ("PACS", None, True),
    ("DCMDB", None, True),
    ("MISSING", None, True),
    ("SERIES UID", None, False),
)


def _check_table(check: PacsCheck) -> str:
    rows = []
    for s in check.series:
        rows.append(
            [
                "" if s.number is None else str(s.number),
                s.modality,
                s.description,
                str(s.pacs_instances),
                str(s.catalog_instances),
                str(s.missing),
                s.series_uid,
            ]
        )
    verdict = (
        f"complete on {check.pacs}"
        if check.complete
        else f"missing {check.missing_instances} instance(s) in "
        f"{len(check.missing_series)} series; repair with POST /studies/{check.study_uid}/repair"
    )
    return f"{table(rows, _CHECK_COLUMNS)}\n{verdict}" if rows else verdict


def _retrieve_parser() -> argparse.ArgumentParser:
    parser = command_parser("dcmdb retrieve", _RETRIEVE_HELP)
    parser.add_argument("--date", help="YYYYMMDD, A-B, A-, -B, today or yesterday")
    parser.add_argument("--modality", help="e.g. MR")
    parser.add_argument("--patient-id")
    parser.add_argument("--accession")
    parser.add_argument("--study-uid")
    parser.add_argument("--physician", help="referring physician, * wildcards")
    parser.add_argument("--pacs", help="a configured PACS (default: the first)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    connection_options(parser)
    return parser


def _check_parser() -> argparse.ArgumentParser:
    parser = command_parser("dcmdb pacs-check", _CHECK_HELP)
    parser.add_argument("study_uid")
    parser.add_argument("--pacs", help="a configured PACS (default: the first)")
    parser.add_argument("--json", action="store_true")
    connection_options(parser)
    return parser

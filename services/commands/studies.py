"""``dcmdb studies`` and ``dcmdb download``: what a lab finds in dcmdb, and fetching it.

Both ask the REST API (``dcmdb api``) at DCMDB_API_URL with the key in DCMDB_API_KEY,
or at --url with --key. An error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from services.api.client import ApiError, ArchiveFormat, Client, StudyQuery
from services.api.schemas import StudyDetail, StudySummary

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
        listing = _Listing(client, query, args.limit)
        if args.json:
            for study in listing:
                print(study.model_dump_json())
        else:
            rows = [_row(study) for study in listing]
            if rows:
                print(table(rows))
            else:
                print("no study matches", file=sys.stderr)
        if listing.more:
            print(f"({args.limit} shown; more match: --limit 0 shows them all)", file=sys.stderr)


def download(argv: list[str]) -> None:
    args = _download_parser().parse_args(argv)
    form: ArchiveFormat = "all" if args.all else "nifti" if args.nifti else "dicom"
    with reporting("download"), client_for("download", args) as client:
        study = client.study(args.study_uid)  # an unknown UID fails here, before any file
        files = _download_with_progress(client, study, form, args.output)
    if not files:
        what = {"dicom": "DICOM", "nifti": "NIfTI", "all": ""}[form]
        _fail("download", f"study {study.study_uid} has no {what} files to download yet")
    size = sum(path.stat().st_size for path in files)
    where = os.path.commonpath(files) if len(files) > 1 else files[0].parent
    print(f"{len(files)} file(s), {human_size(size)}, in {where}")


def _download_with_progress(
    client: Client, study: StudyDetail, form: ArchiveFormat, directory: Path
) -> list[Path]:
    from tqdm import tqdm  # only here: the listing does not need it

    expected = _expected_bytes(study, form)
    with tqdm(
        total=expected or None,
        unit="B",
        unit_scale=True,
        desc=study.folder.rsplit("/", 1)[-1][:40],
        file=sys.stderr,
        disable=None,  # no bar when stderr is not a terminal
        leave=False,
    ) as bar:

        def advance(count: int) -> None:
            bar.update(count)
            if bar.total is not None and bar.n > bar.total:  # the ZIP headers, a late file
                bar.total = bar.n

        return client.download_study(study.study_uid, directory, format=form, progress=advance)


def _expected_bytes(study: StudyDetail, form: ArchiveFormat) -> int:
    """About the archive's size: its entries are stored uncompressed."""
    nifti = sum(o.size_bytes for s in study.series for o in s.nifti.outputs)
    return {"dicom": study.size_bytes, "nifti": nifti, "all": study.size_bytes + nifti}[form]


class _Listing:
    """The studies to show, fetched page by page; `more` says whether `limit` cut some off."""

    def __init__(self, client: Client, query: StudyQuery, limit: int) -> None:
        self._client = client
        self._query = query
        self._limit = limit
        self.more = False

    def __iter__(self) -> Iterator[StudySummary]:
        left = self._limit or None
        query: StudyQuery = {**self._query, "limit": min(left or PAGE_LIMIT, PAGE_LIMIT)}
        while True:
            page = self._client.studies(**query)
            for study in page.items:
                if left == 0:
                    self.more = True
                    return
                yield study
                if left is not None:
                    left -= 1
            if page.next is None:
                return
            if left == 0:
                self.more = True
                return
            query["cursor"] = page.next


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


Columns = tuple[tuple[str, int | None, bool], ...]  # header, width limit, right-aligned


def table(rows: list[list[str]], columns: Columns = _COLUMNS) -> str:
    rows = [
        [_clip(cell, limit) for cell, (_, limit, _) in zip(row, columns, strict=True)]
        for row in rows
    ]
    headers = [header for header, _, _ in columns]
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, _, right) in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _clip(text: str, limit: int | None) -> str:
    text = " ".join(text.split())  # no tab or newline breaks the alignment
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "~"


def human_size(count: int) -> str:
    """Bytes in decimal units, as tqdm counts them: 512 B, 12.3 MB, 1.2 GB."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _studies_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcmdb studies",
        description="List the studies dcmdb holds, newest received first, as a table "
        "or (--json) one JSON object a line.",
    )
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
        "--since", type=_iso_time, metavar="ISO", help="received at or after (naive: UTC)"
    )
    parser.add_argument("--sort", choices=("received", "study_date"), default="received")
    parser.add_argument("--order", choices=("desc", "asc"), default="desc")
    parser.add_argument(
        "--limit", type=_count, default=50, metavar="N", help="show N (default 50; 0: all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    connection_options(parser)
    return parser


def _download_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcmdb download",
        description="Download a study's DICOM files (or NIfTI files, or both) into a "
        "directory, as <study folder>/<series folder>/...",
    )
    parser.add_argument("study_uid", metavar="STUDY_UID")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--nifti", action="store_true", help="the NIfTI files and sidecars")
    form.add_argument("--all", action="store_true", help="DICOM and NIfTI files")
    connection_options(parser)
    return parser


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the API (default: $DCMDB_API_URL or 127.0.0.1:8000)")
    parser.add_argument("--key", help="an API key (default: $DCMDB_API_KEY)")


def _iso_time(text: str) -> str:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return text


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number of 0 or more: {text!r}")
    return int(text)


@contextmanager
def client_for(command: str, args: argparse.Namespace) -> Iterator[Client]:
    try:
        client = Client(args.url, args.key)
    except ValueError as exc:
        _fail(command, str(exc))
    with client:
        yield client


@contextmanager
def reporting(command: str) -> Iterator[None]:
    """What stops a command becomes one line on stderr and exit status 1."""
    try:
        yield
    except ApiError as exc:
        _fail(command, str(exc))
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _fail(command, f"{exc.strerror or exc}{where}")


def _fail(command: str, message: str) -> NoReturn:
    print(f"dcmdb {command}: {message}", file=sys.stderr)
    sys.exit(1)

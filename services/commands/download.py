"""Download a study through the API.

Its DICOM files (or with --nifti its NIfTI files and sidecars, with --all both) go into a
directory, as <study folder>/<series folder>/...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.api.client import ArchiveFormat, Client
from services.api.schemas import StudyDetail
from services.commands.api_connection import client_for, connection_options, fail, reporting
from services.commands.parsing import command_parser
from services.commands.terminal import human_size


def download(argv: list[str]) -> None:
    args = _download_parser().parse_args(argv)
    form: ArchiveFormat = "all" if args.all else "nifti" if args.nifti else "dicom"
    with reporting("download"), client_for("download", args) as client:
        study = client.study(args.study_uid)  # an unknown UID fails here, before any file
        files = _download_with_progress(client, study, form, args.output)
    if not files:
        what = {"dicom": "DICOM", "nifti": "NIfTI", "all": ""}[form]
        fail("download", f"study {study.study_uid} has no {what} files to download yet")
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


def _download_parser() -> argparse.ArgumentParser:
    parser = command_parser("dcmdb download", __doc__)  # the docstring is its --help
    parser.add_argument("study_uid", metavar="STUDY_UID")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--nifti", action="store_true", help="the NIfTI files and sidecars")
    form.add_argument("--all", action="store_true", help="DICOM and NIfTI files")
    connection_options(parser)
    return parser

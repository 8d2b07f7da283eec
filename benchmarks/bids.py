"""BIDS benchmark: what keeping a lab's BIDS dataset adds to converting its studies.

Workload 1, per study: every MR study of the test data (../shared/testdata/dicom) filed by
the sorter's code into a fresh SQLite catalog, each series converted by dcmdb's converter
(`convert_series`, in this process), and after each series the study's session made again
(`BidsViews.refresh`), as the converter's BIDS consumer does at each series' outcome. Printed:
per study, the conversion time, the BIDS time (all the refreshes together) and their ratio.
Aim: under 5 % (no copies: links; no scan of the dataset: one session and participants.tsv).

Workload 2, no rescans: a lab's dataset grown to --sizes sessions (a one-file Philips field
map under new UIDs and PatientIDs, each its own subject), and at each size the refresh of
--rounds new studies timed: the median should not grow with the dataset.

Peer: heudiconv (the tool labs run by hand, ReproIn heuristic, dcm2niix) on the ReproIn-named
series of the test data (the XA30 T1w and BOLD), `uvx heudiconv`, beside dcmdb's conversion +
BIDS of the same series. Skipped with --no-heudiconv.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from processes import cpu_model
from pydicom import dcmread
from pydicom.uid import generate_uid

from services.converter import records
from services.sorter.completion import complete_stable_series, unannounced
from services.sorter.filing import Filer
from shared.bids.views import BidsViews
from shared.catalog.database import open_catalog
from shared.incoming import received_time
from shared.messages import InstanceReceived, SeriesCompleted

TESTDATA = Path(__file__).resolve().parents[2] / "shared/testdata/dicom"
GROWTH_SERIES = "philips_enhanced_fieldmap"
REPROIN_SERIES = ("siemens_xa30_t1w_3d_classic", "siemens_xa30_func_bold")
_stamps = itertools.count(time.time_ns() - 3_600 * 10**9, 10**6)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,50,200", help="dataset sizes (sessions)")
    parser.add_argument("--rounds", type=int, default=5, help="new studies timed at each size")
    parser.add_argument("--no-heudiconv", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args()


class Lab:
    """A data folder with the sorter's filing and the converter's recording, in-process."""

    def __init__(self, data: Path) -> None:
        self.data, self.archive = data, data / "archive"
        self.engine, self.sessions = open_catalog(
            f"sqlite:///{data / 'catalog.sqlite'}", writer=True
        )
        self.filer = Filer(self.sessions, data, self.archive, data / "quarantine")
        self.views = BidsViews(self.sessions, self.archive, None, "shift")

    def file(self, files: list[Path], **tags: object) -> str:
        events = [self._arrive(path, tags) for path in files]
        self.filer.file_batch(events)
        complete_stable_series(self.sessions, stable_age=60)
        return events[0].study_instance_uid

    def series_of(self, study: str) -> list[SeriesCompleted]:
        """The study's completions, as the sorter announces them."""
        return [e for e in unannounced(self.sessions, 10**6) if e.study_instance_uid == study]

    def convert(self, event: SeriesCompleted) -> float:
        job = records.job_for(self.sessions, self.archive, event)
        assert job is not None, event
        started = time.perf_counter()
        result = job.convert(self.data / "work")
        records.record(self.sessions, self.archive, event, result)
        return time.perf_counter() - started

    def refresh(self, study: str) -> float:
        started = time.perf_counter()
        self.views.refresh(study)
        return time.perf_counter() - started

    def _arrive(self, path: Path, tags: dict[str, object]) -> InstanceReceived:
        ds = dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        if tags:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        stamp = next(_stamps)
        incoming = self.data / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        target = incoming / f"{stamp:020d}-{stamp % 10**12:012d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        return InstanceReceived(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            incoming_path=str(target.relative_to(self.data)),
            size=target.stat().st_size,
            received_at=received_time(target.name),
            calling_ae="BENCH",
            peer_host="127.0.0.1",
            association_id="bench",
        )


def mr_studies() -> dict[str, list[Path]]:
    """The test data's MR files by study (Part 10 files only, as the receiver keeps)."""
    studies: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(TESTDATA.glob("*/dicom/**/*")):
        if not path.is_file():
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a Part 10 file: the receiver never keeps one
            continue
        if ds.get("Modality") == "MR":
            studies[str(ds.StudyInstanceUID)].append(path)
    return dict(studies)


def per_study(work: Path) -> None:
    each, once = Lab(work / "each"), Lab(work / "once")
    print("\n== Workload 1: each MR study of the test data, converted series by series")
    print("   each: the session made again after every series (one change at a time);")
    print("   once: made once after its last series (the changes of one batch, as the")
    print("   converter's BIDS consumer takes the outcomes that arrive within a second)")
    print(f"{'study':<14} {'series':>6} {'convert s':>9} {'each s':>7} {'each':>7} {'once':>7}")
    sums = [0.0, 0.0, 0.0]
    ratios: list[float] = []
    for uid, files in mr_studies().items():
        study, _ = each.file(files), once.file(files)
        converting = bids = 0.0
        events = each.series_of(study)
        for event in events:
            converting += each.convert(event)
            bids += each.refresh(study)
            once.convert(event)
        single = once.refresh(study)
        for total, value in zip(range(3), (converting, bids, single), strict=True):
            sums[total] += value
        ratios.append(bids / converting)
        print(
            f"...{uid[-11:]:<11} {len(events):>6} {converting:>9.2f} {bids:>7.3f} "
            f"{bids / converting:>7.1%} {single / converting:>7.1%}"
        )
    print(
        f"all: convert {sums[0]:.1f} s; each {sums[1]:.2f} s = {sums[1] / sums[0]:.1%}, once "
        f"{sums[2]:.2f} s = {sums[2] / sums[0]:.1%}; each per study: median "
        f"{statistics.median(ratios):.1%}, worst {max(ratios):.1%}"
    )


def growth(work: Path, sizes: list[int], rounds: int) -> None:
    lab = Lab(work / "growth")
    files = sorted((TESTDATA / GROWTH_SERIES / "dicom").iterdir())
    print(f"\n== Workload 2: one new study's session as the dataset grows ({GROWTH_SERIES})")
    print(f"{'sessions':>8} {'median refresh ms':>18} {'min':>7} {'max':>7}")
    made = 0
    for size in sizes:
        while made < size:
            new_study(lab, files, made)
            made += 1
        times = [new_study(lab, files, made + i) for i in range(rounds)]
        made += rounds
        print(
            f"{size:>8} {statistics.median(times) * 1000:>18.1f} "
            f"{min(times) * 1000:>7.1f} {max(times) * 1000:>7.1f}"
        )


def new_study(lab: Lab, files: list[Path], number: int) -> float:
    """A new study of a new patient filed and converted; the time of its session's refresh."""
    study = lab.file(
        files,
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientID=f"BENCH{number:06d}",
    )
    for event in lab.series_of(study):
        lab.convert(event)
    return lab.refresh(study)


def heudiconv(work: Path) -> None:
    print("\n== Peer: heudiconv -f reproin -c dcm2niix -b, against dcmdb, on the ReproIn series")
    lab = Lab(work / "beside-heudiconv")
    ours = []
    for folder in REPROIN_SERIES:
        study = lab.file(sorted((TESTDATA / folder / "dicom").iterdir()))
        started = time.perf_counter()
        for event in lab.series_of(study):
            lab.convert(event)
            lab.refresh(study)
        ours.append(time.perf_counter() - started)
    theirs = []
    # heudiconv runs dcm2niix from PATH: the one the project's environment ships, as dcmdb's.
    with_dcm2niix = os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for folder in REPROIN_SERIES:
        out = work / "heudiconv" / folder
        started = time.perf_counter()
        subprocess.run(
            ["uvx", "--quiet", "heudiconv", "-f", "reproin", "-c", "dcm2niix", "-b",
             "--overwrite", "-s", "01", "-ss", "01", "-o", str(out),
             "--files", str(TESTDATA / folder / "dicom")],
            check=True, capture_output=True, env=with_dcm2niix,
        )  # fmt: skip
        theirs.append(time.perf_counter() - started)
    for folder, a, b in zip(REPROIN_SERIES, ours, theirs, strict=True):
        print(f"{folder:<32} dcmdb {a:6.2f} s   heudiconv {b:6.2f} s   ratio {a / b:5.2f}")


def main() -> None:
    args = parse_args()
    print(
        f"{platform.node()}: {cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-bids-"))
    try:
        per_study(work)
        growth(work, [int(s) for s in args.sizes.split(",")], args.rounds)
        if not args.no_heudiconv:
            heudiconv(work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

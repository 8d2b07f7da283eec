"""Reconciliation benchmark: a scanner's keep window checked against the PACS, both dcmqrscp.

Workload: --days days (default 14) x --studies studies a day (default 35) x --series
series a study (default 10) x --instances instances a series (default 2), small 4x4 MR
images, on the scanner. The PACS holds all of it except: --gaps studies (default 5)
missing whole, --gaps series missing, and --gaps series short of one instance, so that
the check has differences to record. dcmqrscp gives no instance counts: every study is
also counted at image level, as a scanner without counts would be (the worst case).
dcmqrscp holds at most 500 studies per AE title (DCMTK's compile-time cap; beyond it, it
deletes the oldest), so 14 x 40 = 560 studies cannot be held: 14 x 35 = 490 is the
largest 14-day workload it serves. Each peer's index is made by dcmqridx from the files,
quicker than storing 10,000 instances over the network into dcmqrscp's linear index.

Measured: `shared.reconciliation.reconcile_scanner` (what the nightly slot and
`dcmdb reconcile` run) into a fresh SQLite catalog, --rounds times (default 3), the first
recording the differences, the others bringing them up to date; the median time, and the
associations each peer saw per run, counted in the peers' own logs (``Association
Received``), not by dcmdb. Aim: one association per peer per run, and a run short enough
to repeat every hour.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from processes import (
    HOST,
    NODELAY_ENV,
    Children,
    cpu_model,
    dcmtk,
    echo_ok,
    free_port,
    run,
    wait_until,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from shared.catalog.database import open_catalog
from shared.catalog.reconciliation import ReconciliationRun
from shared.reconciliation import ReconcileSettings, reconcile_scanner


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--studies", type=int, default=35, help="studies a day")
    parser.add_argument("--series", type=int, default=10, help="series a study")
    parser.add_argument("--instances", type=int, default=2, help="instances a series (>= 2)")
    parser.add_argument("--gaps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args()


def instance(study: str, day: dt.date, series: str, s: int, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = f"{series}.{number}"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "BENCH^RECONCILE", "BENCH1"
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = f"{day:%Y%m%d}", "120000", "LAB^ONE"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", s, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(32)
    return ds


def write_workload(args: argparse.Namespace, scanner: Path, pacs: Path) -> int:
    """The scanner's files and the PACS's (all but the gaps); the instances on the scanner."""
    today, count, study_number = dt.date.today(), 0, 0
    for day_offset in range(args.days):
        day = today - dt.timedelta(days=day_offset)
        for _ in range(args.studies):
            study = generate_uid(prefix=None)
            whole_gap = study_number < args.gaps
            for s in range(1, args.series + 1):
                series = generate_uid(prefix=None)
                missing_series = args.gaps <= study_number < 2 * args.gaps and s == 1
                short = 2 * args.gaps <= study_number < 3 * args.gaps and s == 1
                for n in range(1, args.instances + 1):
                    ds = instance(study, day, series, s, n)
                    name = f"{count:07d}.dcm"
                    ds.save_as(scanner / name, enforce_file_format=True)
                    if not (whole_gap or missing_series or (short and n == args.instances)):
                        os.link(scanner / name, pacs / name)
                    count += 1
            study_number += 1
    return count


def dcmqrscp(kids: Children, work: Path, ae: str) -> tuple[int, Path]:
    """dcmqrscp serving the files already indexed in <work>/<ae>/db."""
    port, base = free_port(), work / ae.lower()
    config = base / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 65536\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\n{ae} {base / 'db'} RW (500, 1024mb) ANY\nAETable END\n"
    )
    proc = kids.start(ae, [dcmtk("dcmqrscp"), "-v", "-c", str(config)], NODELAY_ENV, base)
    wait_until(ae, lambda: echo_ok(ae, port), proc)
    return port, work / f"{ae}.log"


def index(db: Path, chunk: int = 2000) -> None:
    """dcmqridx: each file of the storage area into its index, as dcmqrscp stores them."""
    files = sorted(str(path) for path in db.glob("*.dcm"))
    for start in range(0, len(files), chunk):
        run([dcmtk("dcmqridx"), str(db), *files[start : start + chunk]])


def associations(log: Path) -> int:
    return log.read_text(errors="replace").count("Association Received")


def main() -> int:
    args = parse_args()
    if args.instances < 2:
        raise SystemExit("--instances: at least 2 (a short series lacks one)")
    work = Path(tempfile.mkdtemp(prefix="dcmdb-bench-reconcile-"))
    kids = Children(work)
    try:
        scanner_db, pacs_db = work / "scanner" / "db", work / "pacs" / "db"
        scanner_db.mkdir(parents=True)
        pacs_db.mkdir(parents=True)
        t0 = time.perf_counter()
        total = write_workload(args, scanner_db, pacs_db)
        took = time.perf_counter() - t0
        print(
            f"workload: {args.days} days x {args.studies} studies x {args.series} series x "
            f"{args.instances} instances = {total:,} instances ({took:.1f} s)"
        )
        t0 = time.perf_counter()
        index(scanner_db)
        index(pacs_db)
        print(f"peers indexed in {time.perf_counter() - t0:.1f} s")
        peers = {ae: dcmqrscp(kids, work, ae) for ae in ("SCANNER", "PACS")}
        peers_file = work / "peers.yaml"
        peers_file.write_text(
            yaml.safe_dump(
                [
                    {"name": "pacs", "ae_title": "PACS", "host": HOST, "port": peers["PACS"][0]},
                    {
                        "name": "scanner",
                        "ae_title": "SCANNER",
                        "host": HOST,
                        "port": peers["SCANNER"][0],
                        "role": "scanner",
                        "keeps_days": args.days,
                    },
                ]
            )
        )
        url = f"sqlite:///{work / 'catalog.sqlite'}"
        settings = ReconcileSettings(pacs_file=peers_file, database_url=url, data_dir=work)
        engine, sessions = open_catalog(url, writer=True)
        seconds, cpus, seen = [], [], []
        try:
            for round_number in range(1, args.rounds + 1):
                before = {ae: associations(log) for ae, (_, log) in peers.items()}
                started, cpu = time.perf_counter(), time.process_time()
                run_id = reconcile_scanner(settings, sessions, settings.scanner("scanner"))
                seconds.append(time.perf_counter() - started)
                cpus.append(time.process_time() - cpu)
                with sessions() as session:
                    run = session.get(ReconciliationRun, run_id)
                    assert run is not None
                    outcome = (run.state, run.studies, run.missing, run.associations, run.reason)
                time.sleep(0.5)  # the peers' logs catch up
                opened = {ae: associations(log) - before[ae] for ae, (_, log) in peers.items()}
                seen.append(opened)
                print(
                    f"round {round_number}: {seconds[-1]:.2f} s ({cpus[-1]:.2f} s CPU in dcmdb); "
                    f"run {outcome[0]}, "
                    f"{outcome[1]} studies, {outcome[2]} differences open; associations: "
                    f"scanner {opened['SCANNER']}, PACS {opened['PACS']} "
                    f"(dcmdb counted {outcome[3]}){outcome[4]}"
                )
        finally:
            engine.dispose()
        median = statistics.median(seconds)
        scanner_max, pacs_max = (max(s[ae] for s in seen) for ae in ("SCANNER", "PACS"))
        studies = args.days * args.studies
        print(
            f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
        print(
            f"reconciliation of {studies} studies, {studies * args.series:,} series, "
            f"{total:,} instances: median {median:.2f} s over {args.rounds} rounds "
            f"({studies / median:.0f} studies/s; {statistics.median(cpus):.2f} s CPU in dcmdb); "
            "associations per run: "
            f"scanner {scanner_max}, PACS {pacs_max}"
        )
        return 0
    finally:
        kids.stop_all()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(work)], check=False)
        else:
            print(f"work folder kept: {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

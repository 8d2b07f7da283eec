"""Retrieval benchmark: the same studies moved from DCMTK's dcmqrscp into storescp and into dcmdb.

Workload: N generated MR studies (default 20), each one series of 30 slices 256x256 int16 with
geometry (so that they convert), all of one StudyDate, stored once into a dcmqrscp whose
HostTable knows three move destinations, STORESCP, DCMDB and ORTHANC. DCMTK tools run with
TCP_NODELAY=1.

Rounds (default 3; medians reported, and each round's figures), in each round:
(a) DCMTK `movescu -S -aem STORESCP`, one association, one study-level C-MOVE per study (a
    query file each), into a fresh single-process storescp (+xa -pm +B -pdu 131072, no
    fsync) writing into an empty folder: timed until movescu returns.
(b) the same movescu with -aem DCMDB into a fresh `dcmdb up` (new data folder, SQLite catalog,
    new RabbitMQ vhost), calling as DCMDB (-aet DCMDB): a C-MOVE dcmdb asks for itself, as its
    retriever does, so the PACS names DCMDB as each sub-operation's move originator and dcmdb
    answers each instance once written (its sync is a job's, at the end). Timed until movescu
    returns (the number to compare with (a)), then on until GET /studies shows every instance
    filed. A fresh dcmdb per round, so that every instance is stored every round: dcmdb
    discards an identical re-send cheaply.
(d) the same movescu with -aem ORTHANC into a fresh Orthanc (Debian's, SQLite index,
    SyncStorageArea true: it syncs each file it stores), for comparison.
(c) into a fresh dcmdb: POST /retrievals {"study_date": DAY}. The retriever's C-FIND, per
    study a C-FIND of its series and an image-level count (dcmqrscp gives no counts) while
    DCMDB_RETRIEVE_PARALLEL (2) study-level C-MOVEs run; at the end of the job one sync and
    the check on disk. Timed until the job is completed (everything filed and durable), and
    until every series is converted (GET /studies: conversion.pending == 0), polling the API
    every --poll seconds. The job's own account of its time (queries, moves, waiting for
    filing, the final sync, the check) is read from the retriever's log.

Each clock starts after os.sync(), with the target answering C-ECHO and dcmdb's services all
ready: their start lines in the log (hence DCMDB_LOG_LEVEL=INFO: a line per association, per
study moved and per series converted), then its processes idle for a second (the converter's
fork server runs its practice conversion after the converter said it is ready). The load
average before the run is printed: other work on the machine shows in the numbers.
Targets, each against (a) of the same round, medians: (b) moved <= 1.5 x; (c) job completed
<= 2.0 x; (c) every series converted <= 4.0 x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pynetdicom
from processes import (
    HOST,
    NODELAY_ENV,
    Children,
    Proc,
    Vhost,
    clean_up,
    cpu_model,
    dcmtk,
    echo_ok,
    free_port,
    quiet,
    run,
    wait_until,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

DCMDB = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "dcmdb"
DAY, SLICES, SIZE = "20240601", 30, 256
# The start line of each of dcmdb's services that works on a retrieval.
READY_LINES = (b"announcing arrivals", b"sorting into", b"converting with", b"retrieving to AE")
FINISHED = ("completed", "partial", "failed", "cancelled")
SERVICES = ("receiver", "sorter", "converter", "retriever", "retention", "notifier")


def generate(out: Path, studies: int) -> tuple[list[str], int]:
    """`studies` MR studies of one series of SLICES slices; their UIDs and the bytes written."""
    rng = np.random.default_rng(20240601)
    y, x = np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2
    head = np.where((x / 90) ** 2 + (y / 110) ** 2 < 1, 900.0, 0.0)
    uids = []
    for s in range(studies):
        folder = out / f"study{s + 1:03d}"
        folder.mkdir(parents=True)
        study, series, frame = generate_uid(), generate_uid(), generate_uid()
        uids.append(study)
        common = {
            "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
            "SOPClassUID": MRImageStorage, "StudyDate": DAY, "SeriesDate": DAY,
            "StudyTime": f"{8 + s // 6:02d}{s % 6 * 10:02d}00", "SeriesTime": "000000",
            "AccessionNumber": f"RETR{s + 1:04d}", "Modality": "MR", "Manufacturer": "dcmdb-bench",
            "ReferringPhysicianName": f"LAB{s % 4 + 1}^BENCH", "StudyDescription": "BENCH^retrieve",
            "SeriesDescription": "t1_se_ax", "PatientName": f"BENCH^RETRIEVE{s + 1}",
            "PatientID": f"RETR{s + 1:04d}", "PatientBirthDate": "19800101", "PatientSex": "O",
            "PatientPosition": "HFS", "SliceThickness": "4.0", "SpacingBetweenSlices": "4.0",
            "RepetitionTime": "500", "EchoTime": "12", "MagneticFieldStrength": "3",
            "StudyInstanceUID": study, "SeriesInstanceUID": series, "StudyID": "1",
            "SeriesNumber": 1, "AcquisitionNumber": 1, "FrameOfReferenceUID": frame,
            "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "PixelSpacing": [0.9, 0.9],
            "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "Rows": SIZE,
            "Columns": SIZE, "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
            "PixelRepresentation": 1, "WindowCenter": 600, "WindowWidth": 1200,
        }  # fmt: skip
        for i in range(SLICES):
            ds = Dataset()
            for keyword, value in common.items():
                setattr(ds, keyword, value)
            ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), i + 1
            z = 4.0 * (i - SLICES / 2)
            ds.ImagePositionPatient, ds.SliceLocation = [-0.45 * SIZE, -0.45 * SIZE, z], z
            pixels = head * (1 - (i / SLICES - 0.5) ** 2) + rng.normal(0, 20, head.shape)
            ds.PixelData = np.clip(pixels, 0, 4095).astype("<i2").tobytes()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(folder / f"{i + 1:05d}.dcm", enforce_file_format=True)
    return uids, sum(p.stat().st_size for p in out.rglob("*.dcm"))


def query_files(out: Path, uids: list[str]) -> list[Path]:
    """A study-level C-MOVE identifier per study, as movescu reads them."""
    out.mkdir()
    files = []
    for n, uid in enumerate(uids, 1):
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.StudyInstanceUID = "STUDY", uid
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = StudyRootQueryRetrieveInformationModelMove
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        files.append(out / f"move{n:03d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def http(method: str, url: str, body: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


@dataclass(frozen=True)
class Catalog:
    """What GET /studies says of the catalog."""

    studies: int
    instances: int
    pending: int  # series not converted yet
    failed: int  # series whose conversion failed or was skipped

    @staticmethod
    def read(api: str) -> Catalog:
        items = http("GET", f"{api}/studies?limit=1000")["items"]
        return Catalog(
            len(items),
            sum(s["instance_count"] for s in items),
            sum(s["conversion"]["pending"] for s in items),
            sum(s["conversion"]["failed"] + s["conversion"]["skipped"] for s in items),
        )


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work, self.logs = args, work, work / "logs"
        self.kids, self.vhost = Children(self.logs), Vhost()
        self.pacs_port, self.storescp_port = free_port(), free_port()
        self.orthanc_port = free_port()
        self.dicom_port, self.api_port = free_port(), free_port()
        self.api = f"http://{HOST}:{self.api_port}"
        self.instances = args.studies * SLICES
        self.queries: list[Path] = []
        self.load = os.getloadavg()[0]

    def start_pacs(self, files: Path, uids: list[str]) -> None:
        """dcmqrscp with both move destinations in its HostTable, filled with storescu."""
        pacs = self.work / "pacs"
        (pacs / "db").mkdir(parents=True)
        config = f"""\
NetworkTCPPort  = {self.pacs_port}
MaxPDUSize      = 131072
MaxAssociations = 16

HostTable BEGIN
dcmdb    = (DCMDB, {HOST}, {self.dicom_port})
storescp = (STORESCP, {HOST}, {self.storescp_port})
orthanc  = (ORTHANC, {HOST}, {self.orthanc_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
DCMQRSCP {pacs / "db"} RW ({self.args.studies + 100}, 4096mb) ANY
AETable END
"""
        (pacs / "dcmqrscp.cfg").write_text(config)
        argv = [dcmtk("dcmqrscp"), "-c", str(pacs / "dcmqrscp.cfg")]
        proc = self.kids.start("dcmqrscp", argv, NODELAY_ENV, pacs)
        wait_until("dcmqrscp", lambda: echo_ok("DCMQRSCP", self.pacs_port), proc)
        fill = [dcmtk("storescu"), "-aec", "DCMQRSCP", "+sd", "+r", HOST, str(self.pacs_port)]
        with open(self.logs / "fill.log", "ab") as log:
            subprocess.run([*fill, str(files)], stdout=log, stderr=log, env=NODELAY_ENV, check=True)
        self.queries = query_files(self.work / "queries", uids)

    def move(self, destination: str, round_name: str, calling: str = "MOVESCU") -> float:
        """One movescu association, a C-MOVE per study; seconds until it returns."""
        argv = [dcmtk("movescu"), "-S", "-aet", calling, "-aec", "DCMQRSCP", "-aem", destination,
                HOST, str(self.pacs_port), *map(str, self.queries)]  # fmt: skip
        log = self.logs / f"movescu-{round_name}.log"
        with open(log, "ab") as out:
            t0 = time.perf_counter()
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  env=NODELAY_ENV)  # fmt: skip
            seconds = time.perf_counter() - t0
        if done.returncode != 0 or b"E: " in log.read_bytes():
            raise RuntimeError(f"movescu to {destination} failed, see {log}")
        return seconds

    def storescp(self, r: int) -> float:
        out = self.work / f"storescp-round{r}"
        out.mkdir()
        argv = [dcmtk("storescp"), "-aet", "STORESCP", "+xa", "-pm", "+B", "-pdu", "131072",
                "-od", str(out), "-fe", ".dcm", str(self.storescp_port)]  # fmt: skip
        proc = self.kids.start(f"storescp-round{r}", argv, NODELAY_ENV, self.work)
        try:
            wait_until("storescp", lambda: echo_ok("STORESCP", self.storescp_port), proc)
            os.sync()
            seconds = self.move("STORESCP", f"storescp-round{r}")
        finally:
            self.kids.stop(proc)
        if (got := sum(1 for _ in out.glob("*.dcm"))) != self.instances:
            raise RuntimeError(f"storescp wrote {got} instances, expected {self.instances}")
        if not self.args.keep:
            shutil.rmtree(out, ignore_errors=True)
        return seconds

    def orthanc(self, r: int) -> float:
        """A fresh Orthanc that syncs what it stores; seconds until movescu returned."""
        base, http_port = self.work / f"orthanc-round{r}", free_port()
        base.mkdir()
        config = {
            "Name": "dcmdb-bench", "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "index"), "DicomAet": "ORTHANC",
            "DicomPort": self.orthanc_port, "HttpPort": http_port, "TcpNoDelay": True,
            "DicomCheckCalledAet": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "StorageCompression": False,
            "SyncStorageArea": True, "Plugins": [],
        }  # fmt: skip
        (base / "orthanc.json").write_text(json.dumps(config, indent=2))
        proc = self.kids.start(
            f"orthanc-round{r}", ["Orthanc", str(base / "orthanc.json")], NODELAY_ENV, base
        )
        try:
            wait_until("Orthanc", lambda: echo_ok("ORTHANC", self.orthanc_port), proc)
            os.sync()
            seconds = self.move("ORTHANC", f"orthanc-round{r}")
            stats = http("GET", f"http://{HOST}:{http_port}/statistics")
        finally:
            self.kids.stop(proc)
        if stats["CountInstances"] != self.instances:
            raise RuntimeError(f"Orthanc holds {stats['CountInstances']} instances")
        if not self.args.keep:
            shutil.rmtree(base, ignore_errors=True)
        return seconds

    def start_dcmdb(self, name: str) -> Proc:
        """A fresh `dcmdb up`: empty data folder and catalog, new vhost; return when all ready."""
        data = self.work / name
        self.vhost.recreate()
        env = dict(NODELAY_ENV, DCMDB_DATA_DIR=str(data), DCMDB_AE_TITLE="DCMDB",
                   DCMDB_DATABASE_URL=f"sqlite:///{data / 'catalog.sqlite'}",
                   DCMDB_BROKER_URL=self.vhost.url, DCMDB_DICOM_PORT=str(self.dicom_port),
                   DCMDB_API_PORT=str(self.api_port),
                   DCMDB_PACS=f"DCMQRSCP@{HOST}:{self.pacs_port}", DCMDB_NIGHTLY_RETRIEVE="",
                   DCMDB_POLL_INTERVAL="0.2", DCMDB_STABLE_AGE="600",
                   DCMDB_LOG_LEVEL="INFO",
                   # Side ports of their own: other dcmdb instances may run on this host.
                   DCMDB_METRICS_PORTS=",".join(f"{s}:{free_port()}" for s in SERVICES),
                   )  # fmt: skip
        proc = self.kids.start(name, [str(DCMDB), "up"], env, self.work)
        log = self.logs / f"{name}.log"

        def ready() -> bool:
            if not all(line in log.read_bytes() for line in READY_LINES):
                return False
            with suppress(OSError):
                return Catalog.read(self.api).studies == 0 and echo_ok("DCMDB", self.dicom_port)
            return False

        wait_until(f"dcmdb up ({name})", ready, proc)
        quiet(f"dcmdb up ({name})", proc)
        return proc

    def stop_dcmdb(self, proc: Proc, name: str) -> None:
        self.kids.stop(proc)
        if not self.args.keep:
            shutil.rmtree(self.work / name, ignore_errors=True)

    def until(self, done: Callable[[Catalog], bool], proc: Proc, what: str) -> Catalog:
        deadline = time.monotonic() + self.args.timeout
        while not done(catalog := Catalog.read(self.api)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what}: catalog {catalog} after {self.args.timeout:.0f} s")
            time.sleep(self.args.poll)
        return catalog

    def filed(self, catalog: Catalog) -> bool:
        return catalog.studies == self.args.studies and catalog.instances == self.instances

    def dcmdb_move(self, r: int) -> tuple[float, float]:
        """Seconds until movescu returned and until every instance was filed."""
        name = f"dcmdb-move-round{r}"
        proc = self.start_dcmdb(name)
        try:
            os.sync()
            t0 = time.perf_counter()
            moved = self.move("DCMDB", name, calling="DCMDB")
            self.until(self.filed, proc, "not all filed")
            return moved, time.perf_counter() - t0
        finally:
            self.stop_dcmdb(proc, name)

    def dcmdb_api(self, r: int) -> dict[str, float]:
        """Seconds from POST /retrievals until the job finished, all filed, all converted, and
        the job's own account of its time (`job <part>`)."""
        name, times = f"dcmdb-api-round{r}", {}
        proc = self.start_dcmdb(name)
        try:
            os.sync()
            t0 = time.perf_counter()
            job = http("POST", f"{self.api}/retrievals", {"study_date": DAY})
            deadline = time.monotonic() + self.args.timeout
            while len(times) < 3:
                now = time.perf_counter() - t0
                if "job" not in times:
                    job = http("GET", f"{self.api}/retrievals/{job['id']}")
                    if job["state"] in FINISHED:
                        times["job"] = now
                catalog = Catalog.read(self.api)
                if "filed" not in times and self.filed(catalog):
                    times["filed"] = now
                if "filed" in times and catalog.pending == 0:
                    times["converted"] = now
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"retrieval job {job['state']}, catalog {catalog}")
                time.sleep(self.args.poll)
            if job["state"] != "completed" or catalog.failed:
                raise RuntimeError(f"retrieval job {job['state']} ({job['reason']}), {catalog}")
            return times | {
                f"job {k}": v for k, v in job_timings(self.logs / f"{name}.log").items()
            }
        finally:
            self.stop_dcmdb(proc, name)


def job_timings(log: Path) -> dict[str, float]:
    """What the retriever says its job's time went to (its "timings" line)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if " timings: " in line:
            return dict(json.loads(line.split(" timings: ", 1)[1]))
    raise RuntimeError(f"no timings line in {log}")


def median(values: list[float]) -> float:
    return float(np.median(values))


def spread(values: list[float]) -> str:
    """How much a figure moved between rounds: its range around the median."""
    middle = median(values)
    return f"{min(values):.2f}-{max(values):.2f} ({(max(values) - min(values)) / middle:.0%})"


TARGETS = (
    ("C-MOVE (movescu) into dcmdb vs into storescp", "b moved", 1.5),
    ("POST /retrievals to job completed vs storescp", "c job", 2.0),
    ("POST /retrievals to every series converted vs storescp", "c converted", 4.0),
)
PARTS = ("queries", "moves", "filing", "sync", "check")


def report(bench: Bench, rounds: dict[str, list[float]], size: int) -> int:
    args, n = bench.args, bench.instances
    version = run([dcmtk("storescp"), "--version"]).splitlines()[0].strip("$ ")
    print(f"\nmachine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, {platform.platform()}")
    print(f"versions: {version}; pynetdicom {pynetdicom.__version__}; load average before "
          f"the run {bench.load:.2f}")  # fmt: skip
    print(
        f"workload: {args.studies} MR studies x {SLICES} slices {SIZE}x{SIZE} int16 = {n} "
        f"instances, {size / 1e6:.1f} MB, from dcmqrscp; (a), (b), (d): movescu -S, one "
        f"association, one C-MOVE per study; TCP_NODELAY=1; medians of {args.rounds} rounds\n"
    )
    rows = [
        ("(a) movescu -> storescp, moved", "a"),
        ("(b) movescu -> dcmdb, moved", "b moved"),
        ("(b) movescu -> dcmdb, all filed", "b filed"),
        ("(d) movescu -> Orthanc (synced)", "d"),
        ("(c) POST /retrievals, job completed", "c job"),
        ("(c) POST /retrievals, converted", "c converted"),
    ]
    base = median(rounds["a"])
    print(f"{'target':<38}{'median s':>9}{'inst/s':>8}{'MB/s':>7}{'x storescp':>12}   rounds (s)")
    for label, key in rows:
        middle = median(rounds[key])
        each = " ".join(f"{s:.3f}" for s in rounds[key])
        print(
            f"{label:<38}{middle:>9.3f}{n / middle:>8.0f}{size / middle / 1e6:>7.1f}"
            f"{middle / base:>12.2f}   {each}"
        )
    print("\nwhere the job's time goes (median s; (c), the retriever's own account):")
    for part in ("total", *PARTS):
        values = rounds[f"c job {part}"]
        print(
            f"  {part:<10}{median(values):>8.3f}   rounds: {' '.join(f'{v:.3f}' for v in values)}"
        )
    conversion = [c - j for c, j in zip(rounds["c converted"], rounds["c job"], strict=True)]
    print(f"  {'conversion':<10}{median(conversion):>8.3f}   (after the job completed)")
    print("  (the moves overlap the queries: their span, from the first move's start)")
    failed = 0
    print("\nratios per round (median, range between rounds):")
    for label, key, target in TARGETS:
        ratios = [v / a for v, a in zip(rounds[key], rounds["a"], strict=True)]
        verdict = "PASS" if median(ratios) <= target else "FAIL"
        failed += verdict == "FAIL"
        print(f"{verdict}  {label} <= {target} x: {median(ratios):.2f} x, rounds {spread(ratios)}")
    durable = [b / d for b, d in zip(rounds["b moved"], rounds["d"], strict=True)]
    print(f"      C-MOVE into dcmdb / into Orthanc (which syncs each instance): "
          f"{median(durable):.2f} x")  # fmt: skip
    return 1 if failed else 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--studies", type=int, default=20, help="studies of 30 slices (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (a) to (d), medians")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between API polls (0.1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for dcmdb (600)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--workdir", type=Path, help="parent of the temporary directory")
    args = p.parse_args()
    if args.studies < 1 or args.rounds < 1 or args.poll <= 0:
        p.error("--studies and --rounds must be at least 1, --poll above 0")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so children get stopped
    if not DCMDB.exists():
        raise SystemExit(f"{DCMDB} does not exist: install the project first")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dcmdb-retrieve-", dir=args.workdir))
    (work / "logs").mkdir()
    bench = Bench(args, work)
    try:
        t0 = time.perf_counter()
        uids, size = generate(work / "files", args.studies)
        print(f"generated {len(uids)} studies, {size / 1e6:.1f} MB in "
              f"{time.perf_counter() - t0:.1f} s in {work}", flush=True)  # fmt: skip
        bench.start_pacs(work / "files", uids)
        rounds: dict[str, list[float]] = {}

        def note(key: str, seconds: float) -> None:
            rounds.setdefault(key, []).append(seconds)

        for r in range(1, args.rounds + 1):
            note("a", bench.storescp(r))
            print(f"  (a) storescp round {r}: {rounds['a'][-1]:.3f} s", flush=True)
            moved, filed = bench.dcmdb_move(r)
            note("b moved", moved)
            note("b filed", filed)
            print(f"  (b) dcmdb round {r}: moved {moved:.3f} s, filed {filed:.3f} s", flush=True)
            note("d", bench.orthanc(r))
            print(f"  (d) Orthanc round {r}: {rounds['d'][-1]:.3f} s", flush=True)
            api = bench.dcmdb_api(r)
            for key, seconds in api.items():
                note(f"c {key}", seconds)
            shown = ", ".join(f"{k} {v:.3f} s" for k, v in api.items())
            print(f"  (c) dcmdb POST /retrievals round {r}: {shown}", flush=True)
        return report(bench, rounds, size)
    finally:
        clean_up(bench.kids, bench.vhost, work, args.keep)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")

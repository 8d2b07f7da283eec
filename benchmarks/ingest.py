"""Ingest benchmark: storescu -> (a) storescp, (b) Orthanc, (c) dcmdb receiver, (d) dcmdb up.

Generates N MR slices once, sends the same files with one DCMTK `storescu` association
(-pdu 131072, TCP_NODELAY=1) per round to each target and prints the best instances/s and
MB/s of several rounds with the ratios to storescp and Orthanc. (d) is timed from the start
of storescu until `SELECT count(*) FROM instances` in the SQLite catalog reaches N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import closing, suppress
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

DCMDB = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "dcmdb"
PDU = "131072"
TARGETS = {"a": "storescp", "b": "Orthanc", "c": "dcmdb receiver", "d": "dcmdb receive + sort"}


def generate(out: Path, count: int, size: int) -> int:
    """Write `count` MR slices of size x size int16, one study and series; return the bytes."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(20240601)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    common = {
        "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "SOPClassUID": MRImageStorage, "StudyDate": "20240601", "SeriesDate": "20240601",
        "ContentDate": "20240601", "StudyTime": "093000", "SeriesTime": "093512",
        "AccessionNumber": "BENCH0001", "Modality": "MR", "Manufacturer": "dcmdb-bench",
        "InstitutionName": "Bench Institute", "ReferringPhysicianName": "BENCH^LAB",
        "StudyDescription": "BENCH^ingest", "SeriesDescription": "t1_mprage_sag",
        "PatientName": "BENCH^INGEST", "PatientID": "BENCH0001", "PatientBirthDate": "19800101",
        "PatientSex": "O", "SliceThickness": "1.0", "RepetitionTime": "2300", "EchoTime": "2.98",
        "MagneticFieldStrength": "3", "StudyInstanceUID": study, "SeriesInstanceUID": series,
        "StudyID": "1", "SeriesNumber": 1, "FrameOfReferenceUID": frame,
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2", "Rows": size, "Columns": size,
        "PixelSpacing": [1, 1], "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15,
        "PixelRepresentation": 1, "WindowCenter": 2048, "WindowWidth": 4096,
    }  # fmt: skip
    for i in range(count):
        ds = Dataset()
        for keyword, value in common.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), i + 1
        ds.ContentTime, ds.SliceLocation = f"0935{i % 60:02d}", float(i)
        ds.ImagePositionPatient = [-size / 2, -size / 2, float(i)]
        ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.int16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(out / f"{i + 1:05d}.dcm", enforce_file_format=True)
    return sum(p.stat().st_size for p in out.iterdir())


def storescu(ae: str, port: int, files: Path, log: Path) -> None:
    """Send every file in `files` over one association; raise if storescu reports a failure."""
    argv = [dcmtk("storescu"), "-aec", ae, "-pdu", PDU, "+sd", HOST, str(port), str(files)]
    with open(log, "ab") as out:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=NODELAY_ENV)
    if rc.returncode != 0:
        raise RuntimeError(f"storescu to {ae} exited {rc.returncode}, see {log}")


def count_files(d: Path, pattern: str = "*") -> int:
    """Files directly in `d` (subdirectories such as dcmdb's incoming/.partial not included)."""
    return sum(1 for p in d.glob(pattern) if p.is_file())


def catalog_count(db: Path) -> int:
    """Rows in `instances`, or -1 while the catalog or its table does not exist yet."""
    if not db.exists():
        return -1
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return int(con.execute("SELECT count(*) FROM instances").fetchone()[0])
    except sqlite3.Error:
        return -1


def http(method: str, url: str) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if body else None


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work, self.files = args, work, work / "files"
        self.kids, self.vhost = Children(work / "logs"), Vhost()
        self.orthanc_version = "not run"

    def rounds(self, key: str, one_round: Callable[[Path], float]) -> list[float]:
        """Run `one_round` with a fresh directory per round; return the seconds of each."""
        seconds = []
        for r in range(1, self.args.rounds + 1):
            out = self.work / f"{key}-round{r}"
            out.mkdir()
            seconds.append(one_round(out))
            print(f"  ({key}) round {r}: {seconds[-1]:.3f} s", flush=True)
            if not self.args.keep:
                shutil.rmtree(out, ignore_errors=True)
        return seconds

    def send(self, key: str, ae: str, port: int, then: Callable[[], None] | None = None) -> float:
        """Seconds for storescu (and `then`, if given), after flushing earlier writes to disk."""
        os.sync()
        t0 = time.perf_counter()
        storescu(ae, port, self.files, self.work / "logs" / f"storescu-{key}.log")
        if then:
            then()
        return time.perf_counter() - t0

    def expect(self, what: str, got: int) -> None:
        if got != self.args.count:
            raise RuntimeError(f"{what} holds {got} instances, expected {self.args.count}")

    def storescp(self) -> list[float]:
        def one(out: Path) -> float:
            port = free_port()
            argv = [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(out), str(port)]
            proc = self.kids.start("storescp", argv, NODELAY_ENV, self.work)
            try:
                wait_until("storescp", lambda: echo_ok("STORESCP", port), proc)
                seconds = self.send("a", "STORESCP", port)
            finally:
                self.kids.stop(proc)
            self.expect("storescp output", count_files(out))
            return seconds

        return self.rounds("a", one)

    def orthanc(self) -> list[float]:
        base, dport, hport = self.work / "orthanc", free_port(), free_port()
        base.mkdir()
        config = {
            "Name": "dcmdb-bench", "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "index"), "DicomAet": "ORTHANC", "DicomPort": dport,
            "HttpPort": hport, "TcpNoDelay": True, "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "StorageCompression": False, "Plugins": [],
        }  # fmt: skip
        (base / "orthanc.json").write_text(json.dumps(config, indent=2))
        api = f"http://{HOST}:{hport}"

        def answers() -> bool:
            with suppress(OSError):
                self.orthanc_version = str(http("GET", f"{api}/system")["Version"])
                return True
            return False

        def one(_: Path) -> float:
            for patient in http("GET", f"{api}/patients"):
                http("DELETE", f"{api}/patients/{patient}")
            if left := http("GET", f"{api}/statistics")["CountInstances"]:
                raise RuntimeError(f"Orthanc still holds {left} instances after the DELETEs")
            seconds = self.send("b", "ORTHANC", dport)
            self.expect("Orthanc", http("GET", f"{api}/statistics")["CountInstances"])
            return seconds

        proc = self.kids.start(
            "orthanc", ["Orthanc", str(base / "orthanc.json")], NODELAY_ENV, base
        )
        try:
            wait_until("Orthanc HTTP", answers, proc)
            wait_until("Orthanc DICOM", lambda: echo_ok("ORTHANC", dport), proc)
            return self.rounds("b", one)
        finally:
            self.kids.stop(proc)

    def dcmdb(self, key: str) -> list[float]:
        if not DCMDB.exists():
            raise RuntimeError(f"{DCMDB} does not exist yet")
        sort, n = key == "d", self.args.count

        def all_catalogued(catalog: Path, proc: Proc) -> None:
            deadline = time.monotonic() + 120 + 0.2 * n
            while (got := catalog_count(catalog)) < n:
                if proc.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if proc.poll() is not None else "timed out"
                    raise RuntimeError(f"catalog holds {got} of {n} instances, dcmdb up {state}")
                time.sleep(0.02)

        def one(data: Path) -> float:
            port, catalog = free_port(), data / "catalog.sqlite"
            self.vhost.recreate()
            env = dict(NODELAY_ENV, DCMDB_DATA_DIR=str(data), DCMDB_DICOM_PORT=str(port))
            env.update(DCMDB_AE_TITLE="DCMDB", DCMDB_BROKER_URL=self.vhost.url)
            if sort:
                env["DCMDB_DATABASE_URL"] = f"sqlite:///{catalog}"
            command = "up" if sort else "receiver"
            log = self.work / "logs" / f"dcmdb-{command}.log"
            offset = log.stat().st_size if log.exists() else 0
            proc = self.kids.start(f"dcmdb-{command}", [str(DCMDB), command], env, self.work)
            try:
                wait_until(f"dcmdb {command}", lambda: echo_ok("DCMDB", port), proc)
                # Measure the service as it runs, not as it starts: wait for its publisher.
                ready = b"announcing arrivals"
                wait_until("dcmdb ready", lambda: ready in log.read_bytes()[offset:], proc)
                quiet(f"dcmdb {command}", proc)  # every service done starting (fork server...)
                if not sort:
                    seconds = self.send(key, "DCMDB", port)
                    self.expect("dcmdb incoming", count_files(data / "incoming", "*.dcm"))
                    return seconds
                # Let the sorter create the catalog before the clock starts.
                wait_until("dcmdb catalog", lambda: catalog_count(catalog) >= 0, proc)
                return self.send(key, "DCMDB", port, then=lambda: all_catalogued(catalog, proc))
            finally:
                self.kids.stop(proc)

        return self.rounds(key, one)


def report(bench: Bench, results: dict[str, list[float] | str], total_bytes: int) -> None:
    args, n = bench.args, bench.args.count
    dcmtk_version = run([dcmtk("storescp"), "--version"]).splitlines()[0].strip("$ ")
    print(f"\nmachine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, {platform.platform()}")
    versions = f"{dcmtk_version}; Orthanc {bench.orthanc_version}"
    print(f"versions: {versions}; pynetdicom {pynetdicom.__version__}")
    print(
        f"workload: {n} MR instances {args.size}x{args.size} int16, {total_bytes / 1e6:.1f} MB, "
        f"storescu -pdu {PDU} one association, TCP_NODELAY=1, best of {args.rounds} rounds\n"
    )
    best = {k: n / min(v) for k, v in results.items() if isinstance(v, list)}
    print(f"{'target':<26}{'inst/s':>8}{'MB/s':>8}{'x storescp':>12}{'x Orthanc':>11}   rounds (s)")
    for key, res in results.items():
        label = f"({key}) {TARGETS[key]}"
        if isinstance(res, str):
            print(f"{label:<26}{'FAILED':>8}   {res}")
            continue
        rate, mbs = best[key], total_bytes / min(res) / 1e6
        a, b = (f"{rate / best[k]:.2f}" if k in best else "-" for k in "ab")
        rounds = " ".join(f"{s:.3f}" for s in res)
        print(f"{label:<26}{rate:>8.0f}{mbs:>8.1f}{a:>12}{b:>11}   {rounds}")

    def verdict(key: str, factor: float) -> str:
        if key not in best or "b" not in best:
            return "not measured"
        return "PASS" if best[key] >= factor * best["b"] else "FAIL"

    print(
        f"\ntargets: receiver >= 1.5 x Orthanc: {verdict('c', 1.5)}; "
        f"end to end >= 1.0 x Orthanc: {verdict('d', 1.0)}"
    )
    timed = {k: sorted(v) for k, v in results.items() if isinstance(v, list)}
    if "b" in timed:  # medians, and how far the rounds spread, as rates against Orthanc's
        orthanc = timed["b"][len(timed["b"]) // 2]
        for key in (k for k in "acd" if k in timed):
            rates = [orthanc / s for s in timed[key]]
            middle = orthanc / timed[key][len(timed[key]) // 2]
            print(
                f"median ({key}) {TARGETS[key]}: {middle:.2f} x Orthanc's median rate, "
                f"rounds {min(rates):.2f} to {max(rates):.2f}"
            )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=600, help="instances (default 600)")
    p.add_argument("--size", type=int, choices=(256, 512), default=256, help="rows and columns")
    p.add_argument("--rounds", type=int, default=3, help="rounds per target, best wins (default 3)")
    p.add_argument(
        "--only", default="a,b,c,d", help="targets, comma separated (default a,b,c,d):\n"
        "a = storescp, b = Orthanc, c = dcmdb receiver, d = dcmdb up (receive + sort)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--workdir", type=Path, help="parent of the temporary directory")
    args = p.parse_args()
    args.only = sorted({k.strip() for k in args.only.split(",") if k.strip()})
    if bad := [k for k in args.only if k not in TARGETS]:
        p.error(f"unknown --only entries: {', '.join(bad)}")
    if args.count < 1 or args.rounds < 1:
        p.error("--count and --rounds must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so children get stopped
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dcmdb-ingest-", dir=args.workdir))
    (work / "logs").mkdir()
    bench = Bench(args, work)
    runners: dict[str, Callable[[], list[float]]] = {
        "a": bench.storescp, "b": bench.orthanc,
        "c": lambda: bench.dcmdb("c"), "d": lambda: bench.dcmdb("d"),
    }  # fmt: skip
    try:
        t0 = time.perf_counter()
        total = generate(bench.files, args.count, args.size)
        elapsed = time.perf_counter() - t0
        print(
            f"generated {args.count} instances, {total / 1e6:.1f} MB in {elapsed:.1f} s in {work}"
        )
        results: dict[str, list[float] | str] = {}
        for key in args.only:
            print(f"({key}) {TARGETS[key]}", flush=True)
            try:
                results[key] = runners[key]()
            except (RuntimeError, OSError) as exc:
                print(f"  ({key}) failed: {exc}", file=sys.stderr, flush=True)
                results[key] = str(exc)
        report(bench, results, total)
        return 1 if any(isinstance(r, str) for r in results.values()) else 0
    finally:
        clean_up(bench.kids, bench.vhost, work, args.keep)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")

"""C-MOVE benchmark: one 600-instance study moved out of dcmdb and out of Orthanc into storescp.

Workload: N generated MR slices 256x256 int16 (default 600, 79 MB), one study and series
(the generator of benchmarks/ingest.py), stored once into each source:

(a) dcmdb: `dcmdb receiver` and `dcmdb sorter` (SQLite catalog, a RabbitMQ vhost of its own)
    file the study; the sorter is then stopped, so that only the receiver runs. The keys
    file makes STORESCP a desktop of every lab, listening where storescp does.
(b) Orthanc (Debian's, SQLite index, no storage compression), STORESCP in its
    DicomModalities; it answers C-MOVE synchronously (SynchronousCMove, its default).

Each round, for (a) then (b): a fresh single-process storescp (+xa -pm +B -pdu 131072, no
fsync) into an empty folder, then one `movescu -S -aet STORESCP -aem STORESCP` of the study
(STUDY level), timed until movescu returns; storescp must hold all N instances, and for (a)
each must equal the archived file's data set byte for byte (checked after the clock).
DCMTK tools and Orthanc run with TCP_NODELAY=1. The clock starts after os.sync(), with both
sources idle. Medians of the rounds (default 5), their ratio printed.

Target: dcmdb not slower than Orthanc (Orthanc's seconds / dcmdb's >= 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import pynetdicom
from ingest import catalog_count, generate, http, storescu
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
from pydicom import dcmread

DCMDB = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "dcmdb"
DESTINATION = "STORESCP"
KEYS = """\
desktops:
  - ae_title: STORESCP
    host: 127.0.0.1
    port: {port}
    labs: all
"""


def data_set_digests(files: list[Path]) -> dict[str, str]:
    """SOP Instance UID: SHA-256 of the data set, what follows the file meta information
    (preamble, DICM, the 12 bytes of (0002,0000) and the group length it gives)."""
    digests = {}
    for path in files:
        header = dcmread(path, stop_before_pixels=True)
        start = 132 + 12 + int(header.file_meta.FileMetaInformationGroupLength)
        digests[str(header.SOPInstanceUID)] = hashlib.sha256(path.read_bytes()[start:]).hexdigest()
    return digests


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.kids, self.vhost = Children(work / "logs"), Vhost()
        self.files = work / "files"
        self.storescp_port = free_port()
        self.study_uid = ""
        self.orthanc_version = "?"
        self.load = os.getloadavg()[0]

    def generate(self) -> int:
        size = generate(self.files, self.args.count, 256)
        self.study_uid = str(
            dcmread(next(self.files.iterdir()), stop_before_pixels=True).StudyInstanceUID
        )
        return size

    def start_dcmdb(self) -> tuple[Proc, int, Path]:
        """`dcmdb receiver` over the study, filed by a sorter that is stopped once it is done."""
        data, port = self.work / "dcmdb", free_port()
        data.mkdir()
        (data / "keys.yaml").write_text(KEYS.format(port=self.storescp_port))
        self.vhost.recreate()
        catalog = data / "catalog.sqlite"
        env = dict(NODELAY_ENV, DCMDB_DATA_DIR=str(data), DCMDB_DICOM_PORT=str(port),
                   DCMDB_AE_TITLE="DCMDB", DCMDB_BROKER_URL=self.vhost.url,
                   DCMDB_DATABASE_URL=f"sqlite:///{catalog}", DCMDB_METRICS_PORT="0",
                   DCMDB_STABLE_AGE="3600")  # fmt: skip
        receiver = self.kids.start("dcmdb-receiver", [str(DCMDB), "receiver"], env, self.work)
        sorter = self.kids.start("dcmdb-sorter", [str(DCMDB), "sorter"], env, self.work)
        wait_until("dcmdb receiver", lambda: echo_ok("DCMDB", port), receiver)
        wait_until("dcmdb catalog", lambda: catalog_count(catalog) >= 0, sorter, timeout=300)
        storescu("DCMDB", port, self.files, self.work / "logs" / "fill-dcmdb.log")
        wait_until(
            "the study filed", lambda: catalog_count(catalog) == self.args.count, sorter, 600
        )
        self.kids.stop(sorter)
        quiet("dcmdb receiver", receiver)
        return receiver, port, data / "archive"

    def start_orthanc(self) -> tuple[Proc, int]:
        base, port, http_port = self.work / "orthanc", free_port(), free_port()
        base.mkdir()
        config = {
            "Name": "dcmdb-bench", "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "index"), "DicomAet": "ORTHANC", "DicomPort": port,
            "HttpPort": http_port, "TcpNoDelay": True, "DicomCheckCalledAet": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "StorageCompression": False, "SynchronousCMove": True, "Plugins": [],
            "DicomModalities": {"storescp": [DESTINATION, HOST, self.storescp_port]},
        }  # fmt: skip
        (base / "orthanc.json").write_text(json.dumps(config, indent=2))
        proc = self.kids.start(
            "orthanc", ["Orthanc", str(base / "orthanc.json")], NODELAY_ENV, base
        )
        api = f"http://{HOST}:{http_port}"

        def answers() -> bool:
            with suppress(OSError):
                self.orthanc_version = str(http("GET", f"{api}/system")["Version"])
                return True
            return False

        wait_until("Orthanc", answers, proc)
        wait_until("Orthanc DICOM", lambda: echo_ok("ORTHANC", port), proc)
        storescu("ORTHANC", port, self.files, self.work / "logs" / "fill-orthanc.log")
        held = http("GET", f"{api}/statistics")["CountInstances"]
        if held != self.args.count:
            raise RuntimeError(f"Orthanc holds {held} instances, expected {self.args.count}")
        quiet("Orthanc", proc)
        return proc, port

    def move(self, source_ae: str, port: int, name: str) -> tuple[float, Path]:
        """A fresh storescp, one movescu of the study from the source into it; the seconds
        movescu took and the folder storescp wrote."""
        out = self.work / name
        out.mkdir()
        argv = [dcmtk("storescp"), "-aet", DESTINATION, "+xa", "-pm", "+B", "-pdu", "131072",
                "-od", str(out), "-fe", ".dcm", str(self.storescp_port)]  # fmt: skip
        scp = self.kids.start(f"storescp-{name}", argv, NODELAY_ENV, self.work)
        try:
            wait_until("storescp", lambda: echo_ok(DESTINATION, self.storescp_port), scp)
            move = [dcmtk("movescu"), "-S", "-aet", DESTINATION, "-aec", source_ae,
                    "-aem", DESTINATION, "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={self.study_uid}", HOST, str(port)]  # fmt: skip
            log = self.work / "logs" / f"movescu-{name}.log"
            os.sync()
            with open(log, "ab") as output:
                t0 = time.perf_counter()
                done = subprocess.run(
                    move, stdin=subprocess.DEVNULL, stdout=output, stderr=output, env=NODELAY_ENV
                ).returncode
                seconds = time.perf_counter() - t0
        finally:
            self.kids.stop(scp)
        if done != 0 or b"E: " in log.read_bytes():
            raise RuntimeError(f"movescu from {source_ae} failed, see {log}")
        if (got := sum(1 for _ in out.glob("*.dcm"))) != self.args.count:
            raise RuntimeError(f"storescp got {got} instances from {source_ae}")
        return seconds, out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=600, help="instances of the study (default 600)")
    p.add_argument("--rounds", type=int, default=5, help="moves from each, medians (default 5)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--workdir", type=Path, help="parent of the temporary directory")
    args = p.parse_args()
    if args.count < 1 or args.rounds < 1:
        p.error("--count and --rounds must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so children get stopped
    if not DCMDB.exists():
        raise SystemExit(f"{DCMDB} does not exist: install the project first")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dcmdb-cmove-", dir=args.workdir))
    (work / "logs").mkdir()
    bench = Bench(args, work)
    try:
        size = bench.generate()
        print(f"generated {args.count} instances, {size / 1e6:.1f} MB in {work}", flush=True)
        dcmdb, dcmdb_port, archive = bench.start_dcmdb()
        orthanc, orthanc_port = bench.start_orthanc()
        archived = data_set_digests(sorted(archive.rglob("*.dcm")))
        seconds: dict[str, list[float]] = {"dcmdb": [], "Orthanc": []}
        for r in range(1, args.rounds + 1):
            for name, ae, port in (
                ("dcmdb", "DCMDB", dcmdb_port),
                ("Orthanc", "ORTHANC", orthanc_port),
            ):
                took, out = bench.move(ae, port, f"{name}-round{r}")
                seconds[name].append(took)
                if name == "dcmdb" and data_set_digests(sorted(out.glob("*.dcm"))) != archived:
                    raise RuntimeError(f"round {r}: what dcmdb sent differs from its archive")
                if not args.keep:
                    shutil.rmtree(out, ignore_errors=True)
            print(
                f"  round {r}: dcmdb {seconds['dcmdb'][-1]:.3f} s, "
                f"Orthanc {seconds['Orthanc'][-1]:.3f} s",
                flush=True,
            )
        bench.kids.stop(dcmdb)
        bench.kids.stop(orthanc)
        return report(bench, seconds, size)
    finally:
        clean_up(bench.kids, bench.vhost, work, args.keep)


def report(bench: Bench, seconds: dict[str, list[float]], size: int) -> int:
    n = bench.args.count
    version = run([dcmtk("storescp"), "--version"]).splitlines()[0].strip("$ ")
    print(f"\nmachine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, {platform.platform()}")
    print(f"versions: {version}; Orthanc {bench.orthanc_version}; pynetdicom "
          f"{pynetdicom.__version__}; load average before the run {bench.load:.2f}")  # fmt: skip
    print(f"workload: one study of {n} MR instances 256x256 int16, {size / 1e6:.1f} MB; "
          f"movescu -S (STUDY level) into storescp; TCP_NODELAY=1; medians of "
          f"{bench.args.rounds} rounds\n")  # fmt: skip
    print(f"{'source':<10}{'median s':>10}{'inst/s':>9}{'MB/s':>7}   rounds (s)")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        median = medians[name]
        each = " ".join(f"{s:.3f}" for s in values)
        print(f"{name:<10}{median:>10.3f}{n / median:>9.0f}{size / median / 1e6:>7.1f}   {each}")
    ratio = medians["Orthanc"] / medians["dcmdb"]
    verdict = "PASS" if ratio >= 1.0 else "FAIL"
    print(f"\n{verdict}  dcmdb moves at {ratio:.2f} x Orthanc's speed (target >= 1.00)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")

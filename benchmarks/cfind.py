"""C-FIND benchmark: study-level queries over the same studies in dcmdb and in Orthanc.

Workload: N generated studies (--studies, default 10,000) of one 8x8 secondary capture each,
as benchmarks/api.py makes them (40 labs, 0.3 N patients, dates over 5 years), with a birth
date and sex per patient. Orthanc (SQLite index) gets them by POST /instances; dcmdb by the
sorter's own filing code (`services.sorter.filing.Filer`, into a SQLite catalog and an
archive), and `dcmdb receiver` serves them, with a desktop that sees every lab.

Queries, by DCMTK `findscu -S` at STUDY level with the keys a desktop (Horos) asks for:
PatientName, PatientID, PatientBirthDate, PatientSex, StudyDate, StudyTime, AccessionNumber,
StudyDescription, ReferringPhysicianName, ModalitiesInStudy, NumberOfStudyRelatedSeries,
NumberOfStudyRelatedInstances, StudyInstanceUID:
  (a) every study;
  (b) one month of StudyDate (a range);
  (c) PatientName SMITH* (a wildcard).
Each is run once with -v to count the matches (and warm caches), then timed from findscu's
start to its exit with -q (findscu logging each response would take longer than either
server) and --repeat (the same query up to 10 times on one association, about 20,000 answers
in all, so that findscu's start and the association count for little), R rounds (--rounds,
default 5), dcmdb and Orthanc alternating; the median time per query is reported, and studies
answered per second. Target: dcmdb's rate >= 2 x Orthanc's for each query.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from api import SEED, StudyRecord, Workload, dicom_instances, make_workload
from load_client import answers, call, raw_request, send_all
from processes import (
    HOST,
    NODELAY_ENV,
    Children,
    Proc,
    Vhost,
    cpu_model,
    dcmtk,
    echo_ok,
    free_port,
    wait_until,
)
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from services.sorter.filing import Filer
from shared.catalog.database import open_catalog
from shared.incoming import received_time
from shared.keys import DesktopEntry, editing
from shared.messages import InstanceReceived

ROOT = Path(__file__).resolve().parent.parent
DCMDB = ROOT / ".venv" / "bin" / "dcmdb"
TARGET = 2.0
CALLING_AE = "FINDSCU"
KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "StudyInstanceUID",
)  # fmt: skip
FILING_BATCH = 500
# Queries per findscu run (one association), fewer for big answers: about 20,000 answers.
REPEAT, REPEAT_ANSWERS = 10, 20_000


def queries(work: Workload) -> dict[str, tuple[str, int]]:
    """The -k keys that narrow each query, and how many studies it should find."""
    middle = dt.date(2022, 6, 1)
    first, last = middle.strftime("%Y%m%d"), (middle + dt.timedelta(days=30)).strftime("%Y%m%d")
    in_month = sum(1 for s in work.studies if s.study_date and first <= s.study_date <= last)
    smiths = sum(1 for s in work.studies if work.patients[s.patient][1].startswith("SMITH^"))
    return {
        "(a) all studies": ("", len(work.studies)),
        f"(b) StudyDate {first}-{last}": (f"StudyDate={first}-{last}", in_month),
        "(c) PatientName SMITH*": ("PatientName=SMITH*", smiths),
    }


def birth_date(patient: int) -> str:
    return f"{1940 + patient % 60}{1 + patient % 12:02d}{1 + patient % 28:02d}"


def patient_details(study: StudyRecord, ds: Dataset) -> None:
    """What benchmarks/api.py's instances lack and desktops ask for: birth date, sex, Study ID."""
    ds.PatientBirthDate, ds.PatientSex = birth_date(study.patient), "FM"[study.patient % 2]
    ds.StudyID = study.accession[-6:]


def file_into_dcmdb(data: Path, files: list[bytes], work: Workload) -> None:
    """What the receiver and the sorter would make of the files: the archive and catalog."""
    engine, sessions = open_catalog(f"sqlite:///{data / 'catalog.sqlite'}", writer=True)
    filer = Filer(sessions, data, data / "archive", data / "quarantine")
    incoming = data / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    stamp = time.time_ns()
    try:
        for start in range(0, len(files), FILING_BATCH):
            events = []
            for i in range(start, min(start + FILING_BATCH, len(files))):
                stamp += 1000
                name = f"{stamp:020d}-{uuid.uuid4().hex[:12]}.dcm"
                (incoming / name).write_bytes(files[i])
                uid = work.studies[i].uid
                events.append(InstanceReceived(
                    sop_instance_uid=f"{uid}.1.1", sop_class_uid=SecondaryCaptureImageStorage,
                    study_instance_uid=uid, series_instance_uid=f"{uid}.1",
                    transfer_syntax_uid=ExplicitVRLittleEndian, incoming_path=f"incoming/{name}",
                    size=len(files[i]), received_at=received_time(name), calling_ae="BENCH",
                    peer_host=HOST, association_id=uuid.uuid4().hex,
                ))  # fmt: skip
            filer.file_batch(events)
    finally:
        engine.dispose()


def findscu(
    port: int, called: str, narrowing: str, *, count: bool = False, repeat: int = 1
) -> tuple[float, int]:
    """Seconds findscu took per query, and the matches it received when `count` (-v: it then
    logs each response, which takes it longer; the timed runs log nothing)."""
    argv = [dcmtk("findscu"), "-v" if count else "-q", "-S", "-aet", CALLING_AE, "-aec", called,
            "--repeat", str(repeat), "-k", "QueryRetrieveLevel=STUDY"]  # fmt: skip
    for key in KEYS:
        argv += ["-k", key if not narrowing.startswith(f"{key}=") else narrowing]
    argv += [HOST, str(port)]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=NODELAY_ENV)
    seconds = time.perf_counter() - started
    if proc.returncode != 0 or "Success" not in proc.stdout + proc.stderr and count:
        raise RuntimeError(f"findscu -aec {called} failed: {proc.stderr[-2000:]}")
    return seconds / repeat, (proc.stdout + proc.stderr).count("(Pending)")


class Bench:
    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.args, self.dir = args, work_dir
        self.kids = Children(work_dir)
        self.vhost = Vhost()

    def orthanc(self, files: list[bytes]) -> tuple[Proc, int]:
        base, http, dicom = self.dir / "orthanc", free_port(), free_port()
        config = {
            "Name": "dcmdb-bench", "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "index"), "HttpPort": http, "DicomPort": dicom,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "KeepAlive": True, "TcpNoDelay": True, "StorageCompression": False,
            "DicomAlwaysAllowFind": True, "DicomCheckCalledAet": False, "LimitFindResults": 0,
            "LimitFindInstances": 0, "SaveJobs": False, "Plugins": [],
        }  # fmt: skip
        base.mkdir()
        (base / "orthanc.json").write_text(json.dumps(config, indent=2))
        argv = ["Orthanc", str(base / "orthanc.json")]
        proc = self.kids.start("orthanc", argv, NODELAY_ENV, base)
        wait_until("Orthanc", lambda: answers(http, "/system"), proc)
        self.orthanc_version = str(call(http, "GET", "/system")["Version"])
        t0 = time.perf_counter()
        posts = [raw_request("POST", "/instances", http, f, "dicom") for f in files]
        if failed := asyncio.run(send_all(http, posts, 4)):
            raise RuntimeError(f"{len(failed)} POST /instances failed: {failed[0]}")
        held = call(http, "GET", "/statistics")["CountStudies"]
        if held != len(files):
            raise RuntimeError(f"Orthanc holds {held} studies, not {len(files)}")
        print(f"  Orthanc: {len(files):,} instances POSTed in {time.perf_counter() - t0:.1f} s")
        return proc, dicom

    def dcmdb(self, files: list[bytes], work: Workload) -> tuple[Proc, int]:
        data, port = self.dir / "dcmdb", free_port()
        t0 = time.perf_counter()
        file_into_dcmdb(data, files, work)
        print(f"  dcmdb: {len(files):,} instances filed in {time.perf_counter() - t0:.1f} s")
        with editing(data / "keys.yaml") as document:
            document.desktops.append(
                DesktopEntry(ae_title=CALLING_AE, host=HOST, port=104, labs="all")
            )
        self.vhost.recreate()
        env = dict(NODELAY_ENV, DCMDB_DATA_DIR=str(data), DCMDB_AE_TITLE="DCMDB",
                   DCMDB_DATABASE_URL=f"sqlite:///{data / 'catalog.sqlite'}",
                   DCMDB_BROKER_URL=self.vhost.url, DCMDB_DICOM_PORT=str(port),
                   DCMDB_METRICS_PORT="0", DCMDB_LOG_LEVEL="WARNING")  # fmt: skip
        proc = self.kids.start("dcmdb-receiver", [str(DCMDB), "receiver"], env, self.dir)
        wait_until("dcmdb receiver", lambda: echo_ok("DCMDB", port), proc)
        return proc, port

    def run(self) -> int:
        work = make_workload(self.args.studies, SEED + 3)
        files = list(dicom_instances(work, patient_details))
        wanted = queries(work)
        try:
            _, orthanc_port = self.orthanc(files)
            _, dcmdb_port = self.dcmdb(files, work)
            targets = {"Orthanc": (orthanc_port, "ORTHANC"), "dcmdb": (dcmdb_port, "DCMDB")}
            times: dict[tuple[str, str], list[float]] = {}
            for name, (narrowing, expected) in wanted.items():
                for target, (port, called) in targets.items():
                    # Counted once (and warmed up: caches, the catalog's pages), then timed.
                    _, found = findscu(port, called, narrowing, count=True)
                    if found != expected:
                        raise RuntimeError(f"{target} {name}: {found} matches, not {expected}")
                for _ in range(self.args.rounds):
                    for target, (port, called) in targets.items():
                        repeat = max(1, min(REPEAT, REPEAT_ANSWERS // max(expected, 1)))
                        seconds, _ = findscu(port, called, narrowing, repeat=repeat)
                        times.setdefault((name, target), []).append(seconds)
            return self.report(wanted, times)
        finally:
            self.kids.stop_all()
            self.vhost.delete()

    def report(
        self, wanted: dict[str, tuple[str, int]], times: dict[tuple[str, str], list[float]]
    ) -> int:
        print(f"\nC-FIND at STUDY level, {self.args.studies:,} studies, findscu -S, "
              f"median of {self.args.rounds} (Orthanc {self.orthanc_version}, "
              f"Python {platform.python_version()}, {cpu_model()}, "
              f"load {os.getloadavg()[0]:.2f})\n")  # fmt: skip
        print("| query | matches | Orthanc s | dcmdb s | Orthanc /s | dcmdb /s | x Orthanc |")
        print("|---|---|---|---|---|---|---|")
        met = True
        for name, (_, expected) in wanted.items():
            theirs = statistics.median(times[(name, "Orthanc")])
            ours = statistics.median(times[(name, "dcmdb")])
            ratio = theirs / ours
            met &= ratio >= TARGET
            print(f"| {name} | {expected:,} | {theirs:.3f} | {ours:.3f} | {expected / theirs:,.0f}"
                  f" | {expected / ours:,.0f} | {ratio:.2f} |")  # fmt: skip
        print(f"\ntarget dcmdb >= {TARGET:g} x Orthanc: {'met' if met else 'NOT met'}")
        return 0 if met else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logging.getLogger("dcmdb.share").setLevel(logging.ERROR)  # no lab groups on this machine
    work_dir = Path(tempfile.mkdtemp(prefix="dcmdb-cfind-"))
    try:
        return Bench(args, work_dir).run()
    finally:
        if args.keep:
            print(f"work folder kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

"""QIDO-RS benchmark: dcmdb's GET /dicomweb/studies at 100,000 studies (SQLite, PostgreSQL), and
Orthanc's DICOMweb plugin (/dicom-web/studies) beside dcmdb on the same 10,000 studies.

The catalogs are benchmarks/api.py's (generated studies of about 10 series over 40 labs, 0.3 N
patients named SURNAME^GIVEN from 27 surnames and 10 given names, written straight into the
catalog); the load is its load client (C keep-alive connections from a second process, 1 s of
warm-up then S seconds), sending Accept: application/json as OHIF does; first on one
connection, a user's searches one after another (the target: p95 <= 50 ms), then on C
(--concurrency, default 4), several at once. Queries, the first
two as OHIF's study list sends them (limit 101: a page of 100 and whether there is more):
  (a) PatientName=SMITH*&limit=101, admin key (some 3,700 matches at 100,000 studies),
  (b) the same with a read key of one lab (the 10th biggest: 2 % of the studies),
  (c) PatientName=smith^anna&limit=101: a whole name in another case,
  (d) PatientName=*ANNA*&limit=101: a given name anywhere in the name,
  (e) StudyDate=<one month>&ModalitiesInStudy=MR&limit=101,
  (f) GET /healthz, the trivial request of the same process.
Orthanc: M studies (--orthanc-studies, default 10,000) of one 8x8 instance each, POSTed to
its /instances, with its DICOMweb plugin (Debian: orthanc-dicomweb); dcmdb on a SQLite catalog
of the same studies; both asked (a).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import api as listing
import psycopg
from load_client import call, raw_request, send_all
from processes import ORTHANC_DICOMWEB, Proc, free_port, orthanc_dicomweb_config, wait_until

P95_TARGET = 0.050
LIMIT = 101
PLUGIN = ORTHANC_DICOMWEB
QUERIES = {
    "a": {"PatientName": "SMITH*"},
    "b": {"PatientName": "SMITH*"},  # with the lab's key
    "c": {"PatientName": "smith^anna"},
    "d": {"PatientName": "*ANNA*"},
    "e": {"StudyDate": listing.month_range(listing.MID_MONTH), "ModalitiesInStudy": "MR"},
}
NAMES = {"a": "name SMITH*", "b": "lab key, SMITH*", "c": "smith^anna", "d": "*ANNA*",
         "e": "MR in one month", "f": "/healthz"}  # fmt: skip


def qido_path(prefix: str, query: dict[str, str]) -> str:
    # Wildcards as they are: Orthanc's DICOMweb plugin 1.7 matches "SMITH%2A" literally.
    return f"{prefix}/studies?" + urlencode({**query, "limit": LIMIT}, safe="*^")


class Qido(listing.Bench):
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        super().__init__(args, work)
        self.connections = args.concurrency

    def searches(
        self, backend: str, work: listing.Workload
    ) -> dict[int, dict[str, listing.Measured]]:
        """Each query at each concurrency: one connection (a user's search), then several."""
        url, t0 = self.catalog_url(backend, backend), time.perf_counter()
        series = listing.fill_catalog(url, work, listing.series_rows(work, listing.SEED + 1))
        print(f"  {len(work.studies):,} studies, {series:,} series written in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        proc, port = self.start_api(f"api-{backend}", url)
        found: dict[int, dict[str, listing.Measured]] = {}
        try:
            for connections in sorted({1, self.connections}):
                self.args.concurrency = connections
                found[connections] = {k: self.search(k, port, proc) for k in NAMES}
            return found
        finally:
            self.args.concurrency = self.connections
            self.kids.stop(proc)

    def search(self, name: str, port: int, server: Proc) -> listing.Measured:
        key = self.keys["lab" if name == "b" else "admin"]
        if name == "f":
            path, items, key = "/healthz", 0, ""
        else:
            path = qido_path("/dicomweb", QUERIES[name])
            items = len(call(port, "GET", path, key=key))
        m = self.measure(port, "GET", path, "", items, key, server)
        print(f"  {self.args.concurrency} x ({name}) {path[:80]}: {items} items, "
              f"p50 {listing.ms(m.p50)} ms, p95 {listing.ms(m.p95)} ms, {m.rate:.0f} req/s, "
              f"{listing.ms(m.cpu)} ms CPU", flush=True)  # fmt: skip
        return m

    def orthanc_side_by_side(self) -> tuple[listing.Measured, listing.Measured]:
        """Orthanc's /dicom-web/studies and ours, on the same studies, for (a)."""
        work, n = (
            listing.make_workload(self.args.orthanc_studies, listing.SEED + 2),
            self.args.orthanc_studies,
        )
        base, port = self.work / "orthanc", free_port()
        config = orthanc_dicomweb_config(base, port)
        base.mkdir()
        (base / "orthanc.json").write_text(json.dumps(config, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
        env["TCP_NODELAY"] = "1"
        proc = self.kids.start("orthanc", ["Orthanc", str(base / "orthanc.json")], env, base)
        try:
            wait_until("Orthanc", lambda: listing.answers(port, "/system"), proc)
            self.versions["Orthanc"] = str(call(port, "GET", "/system")["Version"])
            plugins = call(port, "GET", "/plugins")
            if "dicom-web" not in plugins:
                raise RuntimeError(f"Orthanc did not load its DICOMweb plugin: {plugins}")
            self.versions["Orthanc DICOMweb"] = str(
                call(port, "GET", "/plugins/dicom-web")["Version"]
            )
            posts = [raw_request("POST", "/instances", port, f, "dicom")
                     for f in listing.dicom_instances(work)]  # fmt: skip
            if failed := asyncio.run(send_all(port, posts, self.args.concurrency)):
                raise RuntimeError(f"{len(failed)} of {n} POST /instances failed: {failed[0]}")
            url = self.catalog_url("sqlite", "orthanc-sqlite")
            listing.fill_catalog(url, work, listing.single_series_rows(work, len(posts[0])))
            time.sleep(2)  # Orthanc: stable after 1 s
            path = qido_path("/dicom-web", QUERIES["a"])
            theirs = self.measure(port, "GET", path, "", len(call(port, "GET", path)))
        finally:
            self.kids.stop(proc)
        api, api_port = self.start_api("api-orthanc-sqlite", url)
        try:
            key, path = self.keys["admin"], qido_path("/dicomweb", QUERIES["a"])
            ours = self.measure(
                api_port, "GET", path, "", len(call(api_port, "GET", path, key=key)), key
            )
        finally:
            self.kids.stop(api)
        return theirs, ours


def report(
    bench: Qido,
    results: dict[str, dict[int, dict[str, listing.Measured]]],
    orthanc: tuple[listing.Measured, listing.Measured] | None,
) -> bool:
    args, ms = bench.args, listing.ms
    print(f"\nversions: {listing.versions(bench.versions)}")
    print(f"load: 1 or {bench.connections} keep-alive connections from a second process, "
          f"{args.duration:g} s per request after 1 s of warm-up; CPU ms: of the API process "
          "per request")  # fmt: skip
    if results:
        print(f"\n{args.studies:,} studies; (b) with a read key of "
              f"{listing.FOLDERS[listing.MID_LAB]}")  # fmt: skip
        print(f"{'backend':<11}{'conn':>5}  {'query':<22}{'items':>6}{'p50 ms':>8}{'p95 ms':>8}"
              f"{'req/s':>7}{'CPU ms':>8}")  # fmt: skip
    for backend, by_connections in results.items():
        for connections, by_query in by_connections.items():
            for key, m in by_query.items():
                print(f"{backend:<11}{connections:>5}  {f'({key}) {NAMES[key]}':<22}{m.items:>6}"
                      f"{ms(m.p50):>8}{ms(m.p95):>8}{m.rate:>7.0f}{ms(m.cpu):>8}")  # fmt: skip
    if orthanc:
        theirs, ours = orthanc
        print(f"\n{args.orthanc_studies:,} studies of one instance; Orthanc "
              f"{bench.versions['Orthanc']} (SQLite index) with DICOMweb "
              f"{bench.versions['Orthanc DICOMweb']}, dcmdb on SQLite; "
              f"(a) PatientName=SMITH*, {bench.connections} connections")  # fmt: skip
        print(f"{'server':<34}{'items':>6}{'p50 ms':>8}{'p95 ms':>8}{'req/s':>7}")
        for name, m in (("Orthanc GET /dicom-web/studies", theirs),
                        ("dcmdb GET /dicomweb/studies", ours)):  # fmt: skip
            print(f"{name:<34}{m.items:>6}{ms(m.p50):>8}{ms(m.p95):>8}{m.rate:>7.0f}")
        rate, p50 = ours.rate / theirs.rate, ours.p50 / theirs.p50
        print(f"ours/Orthanc: req/s {rate:.2f} x, p50 {p50:.2f} x")
    verdicts = {
        f"{backend} ({q})": (r[1][q].p95 <= P95_TARGET, f"{ms(r[1][q].p95)} ms")
        for backend, r in results.items()
        for q in ("a", "b")
    }
    passed = all(ok for ok, _ in verdicts.values())
    said = ", ".join(f"{k} {what}" for k, (ok, what) in verdicts.items())
    print(f"\n{'PASS' if passed else 'FAIL'}  p95 of a search PatientName=SMITH*&limit=101 "
          f"<= {ms(P95_TARGET)} ms at {args.studies:,} studies: {said}")  # fmt: skip
    return passed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--studies", type=int, default=100_000, help="catalog size (default 100000)")
    p.add_argument("--orthanc-studies", type=int, default=10_000,
                   help="studies in Orthanc and its twin catalog (default 10000)")  # fmt: skip
    p.add_argument("--duration", type=float, default=5.0, help="seconds per request (default 5)")
    p.add_argument("--concurrency", type=int, default=4, help="connections (default 4)")
    p.add_argument("--only", default="sqlite,postgresql,orthanc",
                   help="comma separated (default all): sqlite, postgresql, orthanc")  # fmt: skip
    args = p.parse_args()
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    args.busy = 0
    if bad := [k for k in args.only if k not in (*listing.BACKENDS, "orthanc")]:
        p.error(f"unknown --only entries: {', '.join(bad)}")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="dcmdb-qido-bench-"))
    (work / "logs").mkdir()
    bench, orthanc, failed = Qido(args, work), None, False
    results: dict[str, dict[int, dict[str, listing.Measured]]] = {}
    try:
        backends = [b for b in listing.BACKENDS if b in args.only]
        workload = listing.make_workload(args.studies, listing.SEED) if backends else None
        for backend in backends:
            print(f"({backend})", flush=True)
            try:
                results[backend] = bench.searches(backend, workload)  # type: ignore[arg-type]
            except (RuntimeError, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
                print(f"  ({backend}) failed: {exc}", file=sys.stderr, flush=True)
                failed = True
        if "orthanc" in args.only:
            print("(orthanc)", flush=True)
            if not PLUGIN.exists():
                print(f"  Orthanc's DICOMweb plugin is not installed ({PLUGIN}): "
                      "apt-get install orthanc-dicomweb", flush=True)  # fmt: skip
            else:
                try:
                    orthanc = bench.orthanc_side_by_side()
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    print(f"  (orthanc) failed: {exc}", file=sys.stderr, flush=True)
                    failed = True
        passed = report(bench, results, orthanc)
        return 1 if failed or not passed else 0
    finally:
        bench.kids.stop_all()
        for database in bench.databases:
            database.drop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")

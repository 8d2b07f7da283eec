"""STOW-RS benchmark: one series sent to dcmdb by DICOMweb and by DICOM, side by side.

Runs `dcmdb receiver` and `dcmdb api` (no keys: open on loopback) on a fresh data directory
and sends the same series (default: the 50 files of ge_fmri_epi_4d in the test data) in
rounds to each:

  storescu   DCMTK storescu, one association (-pdu 131072), into the receiver
  dcmsend    DCMTK dcmsend, one association, into the receiver
  stow       one STOW-RS request of the files as they are (httpx, a kept-alive connection)
  stow-dwc   the same with dicomweb-client's store_instances (it encodes each data set)
  echoscu    one C-ECHO: what a DCMTK tool's start and association cost, with no instance

Each is timed until its answer, which dcmdb gives once every instance is fsynced in its
incoming folder. Prints the best instances/s of the rounds and the ratio to storescu.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient
from processes import (
    HOST,
    NODELAY_ENV,
    Children,
    Vhost,
    clean_up,
    cpu_model,
    dcmtk,
    echo_ok,
    free_port,
    quiet,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
DCMDB = REPO / ".venv" / "bin" / "dcmdb"
SERIES = REPO.parent / "shared" / "testdata" / "dicom" / "ge_fmri_epi_4d" / "dicom"
BOUNDARY = "dcmdb-bench-boundary"


def files_of(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.read_bytes()[128:132] == b"DICM"
    )


def multipart(files: list[Path]) -> bytes:
    parts = (
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n"
        % (BOUNDARY.encode(), p.read_bytes())
        for p in files
    )
    return b"".join(parts) + b"--%s--\r\n" % BOUNDARY.encode()


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.files = files_of(args.series)
        self.kids, self.vhost = Children(work / "logs"), Vhost()
        self.port, self.api_port = free_port(), free_port()

    def start(self) -> None:
        self.vhost.recreate()
        env = dict(
            NODELAY_ENV,
            DCMDB_DATA_DIR=str(self.work / "data"),
            DCMDB_DICOM_PORT=str(self.port),
            DCMDB_API_PORT=str(self.api_port),
            DCMDB_AE_TITLE="DCMDB",
            DCMDB_BROKER_URL=self.vhost.url,
            DCMDB_METRICS_PORT="0",
            DCMDB_API_KEYS="",
        )
        receiver = self.kids.start("receiver", [str(DCMDB), "receiver"], env, self.work)
        api = self.kids.start("api", [str(DCMDB), "api"], env, self.work)
        wait_until("dcmdb receiver", lambda: echo_ok("DCMDB", self.port), receiver)
        wait_until("dcmdb api", self._api_answers, api)
        # The API opens its incoming folder and connects to RabbitMQ at its first request.
        self.stow_raw()
        quiet("dcmdb receiver", receiver)
        quiet("dcmdb api", api)

    def _api_answers(self) -> bool:
        try:
            return httpx.get(f"http://{HOST}:{self.api_port}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    def dcmtk_send(self, tool: str) -> None:
        if tool == "storescu":
            argv = [dcmtk("storescu"), "-aec", "DCMDB", "-pdu", "131072", HOST, str(self.port)]
        else:
            argv = [dcmtk("dcmsend"), "-aec", "DCMDB", HOST, str(self.port)]
        result = subprocess.run(
            [*argv, *map(str, self.files)], capture_output=True, env=NODELAY_ENV
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} exited {result.returncode}: {result.stderr[-500:]!r}")

    def stow_raw(self) -> None:
        answer = self.http.post(
            f"http://{HOST}:{self.api_port}/dicomweb/studies",
            content=self.body,
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
            },
        )
        if answer.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {answer.status_code}: {answer.text[:300]}")

    def stow_client(self) -> None:
        client = DICOMwebClient(f"http://{HOST}:{self.api_port}/dicomweb")
        answer = client.store_instances(self.datasets)
        if len(answer.ReferencedSOPSequence) != len(self.files):
            raise RuntimeError("dicomweb-client: not every instance was stored")

    def run(self) -> dict[str, list[float]]:
        self.body = multipart(self.files)
        self.datasets = [pydicom.dcmread(p) for p in self.files]
        self.http = httpx.Client(timeout=120)
        self.start()
        ways: dict[str, Callable[[], None]] = {
            "storescu": lambda: self.dcmtk_send("storescu"),
            "dcmsend": lambda: self.dcmtk_send("dcmsend"),
            "stow": self.stow_raw,
            "stow-dwc": self.stow_client,
            "echoscu": lambda: self.dcmtk_send("echoscu"),
        }
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        for round_ in range(1, self.args.rounds + 1):
            for way, send in ways.items():  # interleaved: a busy moment hits them all
                os.sync()
                started = time.perf_counter()
                send()
                seconds[way].append(time.perf_counter() - started)
            print(f"round {round_}: " + ", ".join(f"{w} {s[-1]:.3f} s" for w, s in seconds.items()))
        return seconds


def report(bench: Bench, seconds: dict[str, list[float]]) -> None:
    count = len(bench.files)
    size = sum(p.stat().st_size for p in bench.files)
    print(f"\nmachine: nproc {len(os.sched_getaffinity(0))}, {cpu_model()}")
    print(f"series: {bench.args.series} ({count} files, {size / 1e6:.1f} MB); best of "
          f"{bench.args.rounds} rounds, until the answer (every instance fsynced)\n")  # fmt: skip
    base = min(seconds["storescu"])
    print(f"{'way':<10}{'seconds':>9}{'inst/s':>9}{'x storescu time':>17}")
    for way, times in seconds.items():
        best = min(times)
        rate = f"{count / best:>9.0f}" if way != "echoscu" else f"{'-':>9}"
        print(f"{way:<10}{best:>9.3f}{rate}{best / base:>17.2f}")
    ratio = min(seconds["stow"]) / base
    print(f"\nSTOW-RS takes {ratio:.2f} x the time of storescu for the same series")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--series", type=Path, default=SERIES, help="a folder of DICOM files")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, best wins (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="dcmdb-stow-"))
    (work / "logs").mkdir()
    bench = Bench(args, work)
    try:
        report(bench, bench.run())
        return 0
    finally:
        clean_up(bench.kids, bench.vhost, work, args.keep)


if __name__ == "__main__":
    sys.exit(main())

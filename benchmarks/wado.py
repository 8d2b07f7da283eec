"""WADO-RS benchmark: a ~100 MB study retrieved from dcmdb's /dicomweb beside the same study's
ZIP download (/studies/{uid}/archive) from the same API, and from Orthanc (its DICOMweb plugin
and its own ZIP archive) in the same run.

The study is benchmarks/convert.py's generated CT (200 slices of 512x512 int16, 105 MB),
filed into a fresh archive and catalog by the sorter's own code, and also stored as Implicit
VR Little Endian for a second dcmdb study, which WADO-RS rewrites as Explicit VR Little
Endian when the client names no transfer syntax (the transcoding path). One `dcmdb api`
(its default: one worker) serves both; each download is read to its end by a client in this
process, one at a time, --rounds times (default 5) after one that is not timed: the median
and best seconds, MB/s and the ratio to the ZIP download are printed, and the API process's
peak memory (VmHWM) before and after the WADO-RS rounds, which stays flat when the study is
streamed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convert import generate_ct
from processes import (
    HOST,
    ORTHANC_DICOMWEB,
    Children,
    free_port,
    orthanc_dicomweb_config,
    wait_until,
)
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from services.sorter.filing import Filer
from shared.catalog.database import open_catalog
from shared.incoming import received_time
from shared.messages import InstanceReceived

ROOT = Path(__file__).resolve().parent.parent
DCMDB = ROOT / ".venv" / "bin" / "dcmdb"
PLUGIN = ORTHANC_DICOMWEB
TARGET = 0.8  # WADO-RS MB/s at least this share of the ZIP download's
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT = 'multipart/related; type="application/dicom"'


@dataclass(frozen=True)
class Download:
    name: str
    seconds: list[float]
    size: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.size / self.median / 1e6


def fetch(port: int, path: str, accept: str = "*/*") -> int:
    """Download `path` to its end; its size (an error unless 200)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=300)
    try:
        conn.request("GET", path, headers={"Accept": accept})
        answer = conn.getresponse()
        if answer.status != 200:
            raise RuntimeError(f"GET {path} answered {answer.status}: {answer.read(300)!r}")
        size = 0
        while chunk := answer.read(1 << 20):
            size += len(chunk)
        return size
    finally:
        conn.close()


def timed(name: str, rounds: int, download: Callable[[], int]) -> Download:
    """`rounds` timed downloads after one that is not timed (the files in the page cache)."""
    seconds, size = [], download()
    for _ in range(rounds):
        t0 = time.perf_counter()
        size = download()
        seconds.append(time.perf_counter() - t0)
    result = Download(name, seconds, size)
    print(f"  {name}: {size / 1e6:.1f} MB, median {result.median:.3f} s "
          f"({result.rate:.0f} MB/s), best {min(seconds):.3f} s", flush=True)  # fmt: skip
    return result


def peak_memory(pid: int) -> int:
    """VmHWM of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def file_study(files: list[Path], data: Path, url: str) -> None:
    """File the instances into the archive and catalog as the sorter does."""
    engine, sessions = open_catalog(url, writer=True)
    filer = Filer(sessions, data, data / "archive", data / "quarantine")
    incoming = data / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    events = []
    for path in files:
        arrived = incoming / f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.dcm"
        shutil.copyfile(path, arrived)
        header = dcmread(arrived, stop_before_pixels=True)
        events.append(InstanceReceived(
            sop_instance_uid=str(header.SOPInstanceUID), sop_class_uid=str(header.SOPClassUID),
            study_instance_uid=str(header.StudyInstanceUID),
            series_instance_uid=str(header.SeriesInstanceUID),
            transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
            incoming_path=str(arrived.relative_to(data)), size=arrived.stat().st_size,
            received_at=received_time(arrived.name), calling_ae="BENCH", peer_host=HOST,
            association_id=uuid.uuid4().hex,
        ))  # fmt: skip
    for start in range(0, len(events), 50):
        filer.file_batch(events[start : start + 50])
    engine.dispose()


def as_implicit(source: Path, out: Path) -> None:
    """The same study under new UIDs, stored as Implicit VR Little Endian."""
    out.mkdir()
    study, series = generate_uid(), generate_uid()
    for path in sorted(source.iterdir()):
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(out / path.name, enforce_file_format=True)


def study_uid(folder: Path) -> str:
    return str(dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID)


def dcmdb(work: Path, kids: Children, studies: list[Path], rounds: int) -> dict[str, object]:
    data, url, port = work / "data", f"sqlite:///{work / 'catalog.sqlite'}", free_port()
    for folder in studies:
        file_study(sorted(folder.iterdir()), data, url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    env.update(DCMDB_DATABASE_URL=url, DCMDB_DATA_DIR=str(data), DCMDB_API_HOST=HOST,
               DCMDB_API_PORT=str(port), DCMDB_LOG_LEVEL="WARNING")  # fmt: skip
    proc = kids.start("api", [str(DCMDB), "api"], env, work)
    try:
        wait_until("dcmdb api", lambda: _answers(port), proc)
        stored, implicit = (study_uid(folder) for folder in studies)
        found: dict[str, object] = {}
        found["zip"] = timed("dcmdb GET /studies/{uid}/archive (ZIP)", rounds,
                             lambda: fetch(port, f"/studies/{stored}/archive"))  # fmt: skip
        before = peak_memory(proc.pid)
        path = f"/dicomweb/studies/{stored}"
        found["wado"] = timed("dcmdb WADO-RS, stored syntax", rounds,
                              lambda: fetch(port, path, ANY_SYNTAX))  # fmt: skip
        found["default"] = timed("dcmdb WADO-RS, no transfer syntax named", rounds,
                                 lambda: fetch(port, path, DEFAULT))  # fmt: skip
        found["transcoded"] = timed(
            "dcmdb WADO-RS, Implicit VR study as Explicit VR",
            rounds,
            lambda: fetch(port, f"/dicomweb/studies/{implicit}", DEFAULT),
        )
        found["memory"] = (before, peak_memory(proc.pid))
        return found
    finally:
        kids.stop(proc)


def _answers(port: int) -> bool:
    try:
        return fetch(port, "/healthz") > 0
    except (OSError, RuntimeError):
        return False


def orthanc(work: Path, kids: Children, folder: Path, rounds: int) -> dict[str, Download]:
    base, port = work / "orthanc", free_port()
    config = orthanc_dicomweb_config(base, port)
    base.mkdir()
    (base / "orthanc.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    env["TCP_NODELAY"] = "1"
    proc = kids.start("orthanc", ["Orthanc", str(base / "orthanc.json")], env, base)
    try:
        wait_until("Orthanc", lambda: _orthanc_answers(port), proc)
        for path in sorted(folder.iterdir()):
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            conn.request("POST", "/instances", body=path.read_bytes())
            answer = conn.getresponse()
            body = json.loads(answer.read())
            conn.close()
        study = body["ParentStudy"]
        uid = study_uid(folder)
        return {
            "wado": timed("Orthanc WADO-RS (/dicom-web), stored syntax", rounds,
                          lambda: fetch(port, f"/dicom-web/studies/{uid}", ANY_SYNTAX)),
            "zip": timed("Orthanc GET /studies/{id}/archive (ZIP)", rounds,
                         lambda: fetch(port, f"/studies/{study}/archive")),
        }  # fmt: skip
    finally:
        kids.stop(proc)


def _orthanc_answers(port: int) -> bool:
    try:
        return fetch(port, "/system") > 0
    except (OSError, RuntimeError):
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--slices", type=int, default=200, help="512x512 slices (default 200: 105 MB)")
    p.add_argument("--rounds", type=int, default=5, help="downloads of each (default 5)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.ERROR)  # the filing's warnings about lab groups
    work = Path(tempfile.mkdtemp(prefix="dcmdb-wado-bench-"))
    (work / "logs").mkdir()
    kids = Children(work / "logs")
    try:
        stored, implicit = work / "ct", work / "ct-implicit"
        generate_ct(stored, args.slices)
        as_implicit(stored, implicit)
        print("(dcmdb)", flush=True)
        ours = dcmdb(work, kids, [stored, implicit], args.rounds)
        theirs: dict[str, Download] = {}
        print("(orthanc)", flush=True)
        if PLUGIN.exists():
            theirs = orthanc(work, kids, stored, args.rounds)
        else:
            print(f"  Orthanc's DICOMweb plugin is not installed ({PLUGIN}): "
                  "apt-get install orthanc-dicomweb")  # fmt: skip
        return report(ours, theirs)
    finally:
        kids.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def report(ours: dict[str, object], theirs: dict[str, Download]) -> int:
    zip_, wado = ours["zip"], ours["wado"]
    assert isinstance(zip_, Download) and isinstance(wado, Download)
    print(f"\n{'download':<52}{'MB':>7}{'median s':>10}{'MB/s':>7}{'x ZIP':>7}")
    for item in (*(v for v in ours.values() if isinstance(v, Download)), *theirs.values()):
        print(f"{item.name:<52}{item.size / 1e6:>7.1f}{item.median:>10.3f}{item.rate:>7.0f}"
              f"{item.rate / zip_.rate:>7.2f}")  # fmt: skip
    before, after = ours["memory"]  # type: ignore[misc]
    print(
        f"dcmdb api peak memory (VmHWM): {before} MB before the WADO-RS downloads, {after} MB after"
    )
    if theirs:
        print(f"dcmdb WADO-RS / Orthanc WADO-RS: {wado.rate / theirs['wado'].rate:.2f} x")
    ratio = wado.rate / zip_.rate
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    print(f"{verdict}  WADO-RS of the study >= {TARGET} x its ZIP download: {ratio:.2f} x")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")

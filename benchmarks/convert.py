"""Conversion benchmark: dcmdb's converter and `dcm2niix -z y` on the same series.

Series: a generated 200-slice 512x512 int16 CT (ct), siemens_xa30_t1w_3d_classic (t1),
ge_fmri_epi_4d (fmri), a Siemens XA30 diffusion series (dwi: enhanced multi-frame, 21
volumes) and a coronal Siemens mosaic (mosaic: VB17 EPI, descending slices). Ours is timed
as the service runs it: `run_isolated` forks the conversion from a warm forkserver, in a
fresh helper process per round whose process tree's max RSS (GNU time) is the peak memory.
dcm2niix runs as `dcm2niix -z y -o OUT FOLDER`, timed and measured the same way. Best wall
time of several rounds; output size = bytes of .nii.gz.
(e2e) starts `dcmdb up` (stable age 2 s), sends ge_fmri_epi_4d, then the T1, with DCMTK's
storescu and prints the time from storescu's return to the .nii.gz in the archive, minus 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from processes import HOST, Children, Vhost, dcmtk, free_port
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
DCMDB, DCM2NIIX = ROOT / ".venv" / "bin" / "dcmdb", ROOT / ".venv" / "bin" / "dcm2niix"
TIME = "/usr/bin/time"  # GNU time
TESTDATA = Path("/work/shared/testdata/dicom")
SERIES = {"ct": "generated CT 200x512x512", "t1": "siemens_xa30_t1w_3d_classic",
          "fmri": "ge_fmri_epi_4d", "dwi": "siemens_xa30_dwi_enhanced_pa",
          "mosaic": "siemens_vb17_mosaic_cordesc35"}  # fmt: skip
STABLE_AGE, MB = 2.0, 1e6


@dataclass
class Run:
    seconds: float
    peak: int  # bytes, max RSS of the process tree
    out_bytes: int
    engine: str


def generate_ct(out: Path, count: int = 200, size: int = 512) -> None:
    """An axial CT phantom (air, body, lungs, spine) in HU + 1024, int16, 1.25 mm slices."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(20240601)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    spacing, fov = 0.7, 0.7 * size
    common = {
        "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "SOPClassUID": CTImageStorage, "StudyDate": "20240601", "SeriesDate": "20240601",
        "StudyTime": "101500", "SeriesTime": "101812", "AccessionNumber": "BENCH0002",
        "Modality": "CT", "Manufacturer": "dcmdb-bench", "ReferringPhysicianName": "BENCH^LAB",
        "StudyDescription": "CT THORAX", "SeriesDescription": "thorax 1.25 mm",
        "PatientName": "BENCH^CONVERT", "PatientID": "BENCH0002", "PatientBirthDate": "19700101",
        "PatientSex": "O", "PatientPosition": "HFS", "KVP": "120", "SliceThickness": "1.25",
        "ConvolutionKernel": "STANDARD", "StudyInstanceUID": study, "SeriesInstanceUID": series,
        "StudyID": "1", "SeriesNumber": 2, "FrameOfReferenceUID": frame,
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2", "Rows": size, "Columns": size,
        "PixelSpacing": [spacing, spacing], "BitsAllocated": 16, "BitsStored": 16,
        "HighBit": 15, "PixelRepresentation": 1, "RescaleIntercept": "-1024",
        "RescaleSlope": "1", "RescaleType": "HU", "WindowCenter": 40, "WindowWidth": 400,
    }  # fmt: skip
    y, x = (np.mgrid[0:size, 0:size] - size / 2) * spacing
    for i in range(count):
        grow = 1 + 0.1 * np.sin(np.pi * i / count)
        hu = np.full((size, size), -1000.0)
        hu[(x / (160 * grow)) ** 2 + (y / (110 * grow)) ** 2 < 1] = 40
        for side in (-1, 1):
            hu[((x - side * 70) / 55) ** 2 + ((y + 10) / (75 * grow)) ** 2 < 1] = -850
        hu[x**2 + (y - 70) ** 2 < 18**2] = 700
        hu += rng.normal(0, 12, hu.shape)
        ds = Dataset()
        for keyword, value in common.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), i + 1
        ds.ImagePositionPatient = [-fov / 2, -fov / 2, -1.25 * i]
        ds.SliceLocation = -1.25 * i
        ds.PixelData = np.clip(np.rint(hu + 1024), -1024, 3071).astype("<i2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(out / f"CT{i + 1:05d}.dcm", enforce_file_format=True)


def helper(folder: Path, out: Path) -> None:
    """In a fresh process: convert `folder` with run_isolated; print the result as JSON."""
    import multiprocessing.forkserver as forkserver

    import pydicom

    from services.converter.isolation import Job, run_isolated

    files = tuple(sorted(p for p in folder.iterdir() if p.is_file()))
    uids = ("", "")
    if files:
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        uids = (str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    # Warm up: the service's forkserver has the conversion code imported before any series.
    run_isolated(Job((), out / "warmup", "warmup", "", ""), timeout=600)
    t0 = time.perf_counter()
    result = run_isolated(Job(files, out, "series", *uids), timeout=1800)
    seconds = time.perf_counter() - t0
    # Reap the forkserver: the max RSS of the child it reaped then reaches GNU time's wait.
    forkserver._forkserver._stop()  # type: ignore[attr-defined]
    engines = sorted({o.engine for o in result.outputs})
    sizes = sum(o.nifti.stat().st_size for o in result.outputs)
    fields = {"seconds": seconds, "status": result.status, "reason": result.reason}
    print(json.dumps({**fields, "engine": ", ".join(engines), "bytes": sizes}))


def helper_argv(folder: Path, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--helper", str(folder), str(out)]


def measured(argv: list[str]) -> tuple[float, int, str]:
    """Seconds, max RSS (bytes) of the process tree and output of `argv`; raise on failure.

    GNU time measures, not wait4 here: a child forked from this interpreter starts with its
    resident memory, and the high-water mark survives exec.
    """
    with tempfile.NamedTemporaryFile("r", prefix="maxrss-") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-f", "%M", "-o", rss.name, *argv],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        peak = int(rss.read().split()[-1]) * 1024  # GNU time's %M is in KiB
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} exited {proc.returncode}: {proc.stdout[-500:]}")
    return seconds, peak, proc.stdout


def ours(folder: Path, out: Path) -> Run:
    _, peak, stdout = measured(helper_argv(folder, out))
    got = json.loads(stdout.strip().splitlines()[-1])
    if got["status"] != "converted":
        raise RuntimeError(f"our conversion {got['status']}: {got['reason']}")
    return Run(got["seconds"], peak, got["bytes"], got["engine"])


def dcm2niix(folder: Path, out: Path) -> Run:
    out.mkdir(parents=True)
    seconds, peak, stdout = measured([str(DCM2NIIX), "-z", "y", "-o", str(out), str(folder)])
    version = next((w for w in stdout.split() if w.startswith("v1.")), "")
    written = list(out.glob("*.nii.gz"))
    if not written:
        raise RuntimeError(f"dcm2niix wrote no .nii.gz for {folder}")
    return Run(seconds, peak, sum(p.stat().st_size for p in written), f"dcm2niix {version}")


def benchmark(key: str, folder: Path, work: Path, args: argparse.Namespace) -> tuple[Run, Run]:
    """Best time and the highest peak of `rounds` rounds of each, rounds interleaved."""
    runs: dict[str, list[Run]] = {"ours": [], "dcm2niix": []}
    for r in range(1, args.rounds + 1):
        for name, convert in (("ours", ours), ("dcm2niix", dcm2niix)):
            out = work / f"{key}-{name}-round{r}"
            runs[name].append(convert(folder, out))
            print(f"  ({key}) {name} round {r}: {runs[name][-1].seconds:.3f} s", flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)

    def best(rs: list[Run]) -> Run:
        fastest = min(rs, key=lambda run: run.seconds)
        return Run(fastest.seconds, max(run.peak for run in rs), fastest.out_bytes, fastest.engine)

    return best(runs["ours"]), best(runs["dcm2niix"])


def report(results: dict[str, tuple[Run, Run]], sizes: dict[str, int], baseline: int) -> None:
    """The table; `baseline` is the peak of our helper converting nothing (the interpreter)."""
    cpu = next(
        (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln), ""
    )
    print(f"\nmachine: nproc {len(os.sched_getaffinity(0))}, {cpu.partition(':')[2].strip()}")
    print(
        f"{'series':<7}{'engine (ours)':<19}{'time s ours/d2x':>17}{'x':>6}"
        f"{'peak MB ours/d2x':>18}{'x disk':>8}{'-base':>7}{'out MB ours/d2x':>17}{'x':>6}"
    )
    for key, (a, b) in results.items():
        print(
            f"{key:<7}{a.engine:<19}{f'{a.seconds:.3f}/{b.seconds:.3f}':>17}"
            f"{a.seconds / b.seconds:>6.2f}{f'{a.peak / MB:.0f}/{b.peak / MB:.0f}':>18}"
            f"{a.peak / sizes[key]:>8.2f}{(a.peak - baseline) / sizes[key]:>7.2f}"
            f"{f'{a.out_bytes / MB:.2f}/{b.out_bytes / MB:.2f}':>17}"
            f"{a.out_bytes / b.out_bytes:>6.2f}"
        )
    described = (f"{k} = {SERIES[k]}, {v / MB:.1f} MB on disk" for k, v in sizes.items())
    print(
        f"\nseries: {'; '.join(described)}"
        f"\ndcm2niix: {next(iter(results.values()))[1].engine} -z y (pigz: "
        f"{shutil.which('pigz') or 'none, so its internal zlib'}); x disk -base: our peak "
        f"minus {baseline / MB:.0f} MB, the peak of the same helper converting nothing\n"
    )
    targets = {
        "time <= 2 x dcm2niix": lambda a, b, _: a.seconds / b.seconds <= 2.0,
        "output size <= 1.1 x dcm2niix": lambda a, b, _: a.out_bytes / b.out_bytes <= 1.1,
        "peak memory <= 3 x series on disk": lambda a, _, disk: a.peak / disk <= 3.0,
    }
    for name, ok in targets.items():
        verdicts = {k: ok(a, b, sizes[k]) for k, (a, b) in results.items()}
        summary = ", ".join(f"{k} {'pass' if v else 'FAIL'}" for k, v in verdicts.items())
        print(f"{'PASS' if all(verdicts.values()) else 'FAIL'}  {name}: {summary}")


def end_to_end(work: Path) -> None:
    """Seconds from storescu's return to the series' .nii.gz in the archive, minus stable age.

    ge_fmri_epi_4d goes first, the converter's first series since start (its forkserver
    imports the conversion code then); the T1 follows as a series to a warm converter.
    """
    data, log, port = work / "e2e-data", work / "dcmdb-up.log", free_port()
    vhost, niftis, kids = Vhost(), "archive/*/*/nifti/*.nii.gz", Children(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    env.update(TCP_NODELAY="1", DCMDB_DATA_DIR=str(data), DCMDB_DICOM_PORT=str(port),
               DCMDB_AE_TITLE="DCMDB", DCMDB_STABLE_AGE=str(STABLE_AGE),
               DCMDB_BROKER_URL=vhost.url)  # fmt: skip
    proc: subprocess.Popen[bytes] | None = None

    def deliver(key: str, when: str) -> None:
        assert proc is not None
        before = set(data.glob(niftis))
        send = [dcmtk("storescu"), "-aec", "DCMDB", "-pdu", "131072", "+sd", HOST, str(port),
                str(TESTDATA / SERIES[key] / "dicom")]  # fmt: skip
        subprocess.run(send, check=True, capture_output=True, env=env)
        sent = time.perf_counter()
        while not (new := sorted(set(data.glob(niftis)) - before)):
            if proc.poll() is not None or time.perf_counter() - sent > 120:
                raise RuntimeError(f"no NIfTI of {key} 120 s after sending it, see {log}")
            time.sleep(0.005)
        latency, on_disk = time.perf_counter() - sent, new[0].stat().st_mtime
        with closing(sqlite3.connect(data / "catalog.sqlite")) as db:
            waited, done = db.execute(  # timestamps in UTC; as Unix seconds: (jd - 2440587.5) d
                "SELECT (julianday(completed_at) - julianday(last_received_at)) * 86400, "
                "(julianday(completed_at) - 2440587.5) * 86400 FROM series "
                "ORDER BY completed_at DESC"
            ).fetchone()
        print(
            f"(e2e) {SERIES[key]} ({when}): storescu returned -> {new[0].name} in "
            f"{latency:.3f} s, minus the stable age ({STABLE_AGE:.0f} s): "
            f"{latency - STABLE_AGE:.3f} s\n      [catalog: last received -> complete "
            f"{waited:.3f} s, complete -> NIfTI on disk {on_disk - done:.3f} s]"
        )

    try:
        vhost.recreate()
        proc = kids.start("dcmdb-up", [str(DCMDB), "up"], env, work)
        echo = [dcmtk("echoscu"), "-aec", "DCMDB", "-to", "2", HOST, str(port)]
        deadline = time.monotonic() + 60
        while not (
            subprocess.run(echo, capture_output=True).returncode == 0
            and all(s in log.read_bytes() for s in (b"announcing arrivals", b"converting with"))
        ):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dcmdb up did not become ready, see {log}")
            time.sleep(0.1)
        print()
        deliver("fmri", "first series since start")
        deliver("t1", "next series, warm converter")
    finally:
        kids.stop_all()
        vhost.delete()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per engine, best wins (default 3)")
    p.add_argument("--only", default="ct,t1,fmri,dwi,mosaic,e2e", help="comma separated "
                   "(default all): ct, t1, fmri, dwi, mosaic, e2e")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--helper", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    if bad := [k for k in args.only if k not in (*SERIES, "e2e")]:
        p.error(f"unknown --only entries: {', '.join(bad)}")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    if args.helper:
        helper(*args.helper)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so children get stopped
    work = Path(tempfile.mkdtemp(prefix="dcmdb-convert-bench-"))
    failed = False
    try:
        folders = {k: TESTDATA / v / "dicom" for k, v in SERIES.items() if k != "ct"}
        if "ct" in args.only:
            t0 = time.perf_counter()
            generate_ct(folders.setdefault("ct", work / "ct"))
            print(f"{SERIES['ct']} in {time.perf_counter() - t0:.1f} s in {work}")
        results: dict[str, tuple[Run, Run]] = {}
        sizes: dict[str, int] = {}
        for key in (k for k in SERIES if k in args.only):
            print(f"({key}) {SERIES[key]}", flush=True)
            sizes[key] = sum(p.stat().st_size for p in folders[key].iterdir() if p.is_file())
            try:
                results[key] = benchmark(key, folders[key], work, args)
            except (RuntimeError, OSError) as exc:
                print(f"  ({key}) failed: {exc}", file=sys.stderr, flush=True)
                failed = True
        if results:
            (work / "empty").mkdir()
            baseline = measured(helper_argv(work / "empty", work / "baseline"))[1]
            report(results, sizes, baseline)
        if "e2e" in args.only:
            try:
                end_to_end(work)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                print(f"(e2e) failed: {exc}", file=sys.stderr, flush=True)
                failed = True
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("interrupted")

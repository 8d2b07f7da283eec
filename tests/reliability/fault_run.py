"""A fault run: the whole pipeline (``dcmdb up``) receives a generated workload from a
sender that behaves as a PACS does (what failed is sent again), while its parts are
killed and its disk filled under it; then every instance is accounted for.

Faults, each at a point of the sending: the receiver killed (-9) mid-association, the
sorter killed twice, RabbitMQ restarted, the data disk filled and freed again, and the
converter killed while a conversion runs. After each the time until the pipeline
made progress again is measured.

Against a RabbitMQ cluster (``CLUSTER_SCHEDULE``, dcmdb given every node's URL), the node
dcmdb's services are on is killed (-9) and started again, and later the node they moved
to: after each kill, the times until the receiver publishes again and until the sorter
files an instance received after the kill.

The report counts: sent, C-STOREs attempted, acknowledged (0x0000), stored (the
archived data set equal to the one sent), filed (catalog rows), series converted,
dead-lettered, lost (acknowledged but not stored and filed: must be 0) and duplicated
(more than one catalog row, file or NIfTI for one thing: must be 0).

Run by tests/reliability/test_fault_run.py (2,000 instances; 1,000 on the cluster) and,
longer and with more rounds of faults, by ``scripts/soak``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import json
import os
import signal
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE
from sqlalchemy import bindparam, create_engine, text

from shared.broker import connect, dead_letter_counts
from shared.messages import Topology
from shared.pacs import tuned_requestor
from tests.broker_cluster import Cluster, Node
from tests.conftest import require_tool
from tests.system import AE_TITLE, Dcmdb

SIZE = 64
DAY = "20260101"


@dataclass(frozen=True)
class Workload:
    files: dict[str, Path]  # SOP Instance UID -> file
    digests: dict[str, str]  # SOP Instance UID -> sha256 of the data set as sent
    series: dict[str, int]  # Series Instance UID -> instances


def generate(out: Path, studies: int, series_per_study: int, slices: int) -> Workload:
    """MR series with geometry, so that each converts; small slices, so that it is quick."""
    rng = np.random.default_rng(7)
    files, digests, series_sizes = {}, {}, {}
    out.mkdir(parents=True, exist_ok=True)
    for s in range(studies):
        study, frame = generate_uid(), generate_uid()
        for n in range(series_per_study):
            series = generate_uid()
            series_sizes[series] = slices
            for i in range(slices):
                ds = _slice(study, series, frame, s, n, i, rng)
                path = out / f"{s:03d}-{n:02d}-{i:04d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                files[ds.SOPInstanceUID] = path
                digests[ds.SOPInstanceUID] = data_set_digest(path)
    return Workload(files, digests, series_sizes)


def _slice(
    study: str, series: str, frame: str, s: int, n: int, i: int, rng: np.random.Generator
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.StudyDate = ds.SeriesDate = DAY
    ds.StudyTime, ds.SeriesTime = f"{8 + s % 10:02d}0000", f"{8 + s % 10:02d}{n:02d}00"
    ds.Modality, ds.Manufacturer = "MR", "dcmdb-fault-run"
    ds.ReferringPhysicianName = f"LAB{s % 3}^FAULTS"
    ds.PatientName, ds.PatientID = f"FAULT^RUN{s}", f"FAULT{s:04d}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", n + 1, i + 1
    ds.SeriesDescription = f"series_{n + 1}"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-32.0, -32.0, 2.0 * i]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], "2"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.PixelData = rng.integers(0, 1000, (SIZE, SIZE), dtype=np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def data_set_digest(path: Path) -> str:
    """sha256 of what follows the file meta information: the bytes a C-STORE carries."""
    raw = path.read_bytes()
    (meta_length,) = struct.unpack_from("<L", raw, 140)  # (0002,0000) UL, explicit VR
    return hashlib.sha256(raw[144 + meta_length :]).hexdigest()


class Sender:
    """Sends every file until each is acknowledged, as a PACS does: a refusal or a
    broken association is followed by a pause and another try.

    It sends at most ``rate`` instances a second, as a PACS forwarding what a scanner
    makes, and no further than ``hold_at`` allows: the faults are meant to strike while
    it sends, and unheld it could be through before a slow restart is over."""

    def __init__(self, port: int, files: dict[str, Path], rate: float) -> None:
        self.port = port
        self.interval = 1 / rate
        self._next_send = 0.0
        self._limit = 1.0  # the progress it may not reach
        self._room = threading.Condition()
        self.pending = dict(files)
        self.acknowledged: set[str] = set()
        self.acknowledged_in_order: list[str] = []
        self.attempts = 0
        self.refusals: Counter[int] = Counter()
        self.broken_associations = 0
        # when the association of the latest 0x0000 was opened: a success on one opened
        # after a fault is the sender working again, not an answer already on its way
        self.last_success_opened = 0.0
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)

    @property
    def progress(self) -> float:
        done = len(self.acknowledged)
        return done / (done + len(self.pending))

    def hold_at(self, progress: float) -> None:
        """Send on only while the progress is below ``progress`` (1.0: send everything)."""
        with self._room:
            self._limit = progress
            self._room.notify_all()

    def wait_for_progress(self, progress: float) -> None:
        wait(lambda: self.progress >= progress or not self.pending, 600)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{len(self.pending)} instance(s) never acknowledged")

    def _run(self) -> None:
        ae = AE(ae_title="FAULTPACS")
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        while self.pending:
            assoc = ae.associate("127.0.0.1", self.port, ae_title=AE_TITLE)
            if not assoc.is_established:
                time.sleep(0.5)
                continue
            try:
                self._send_all(tuned_requestor(assoc), time.monotonic())
            finally:
                if assoc.is_established:
                    assoc.release()

    def _send_all(self, assoc: object, opened: float) -> None:
        for sop, path in list(self.pending.items()):
            with self._room:
                self._room.wait_for(lambda: self.progress < self._limit)
            self._pace()
            self.attempts += 1
            try:
                status = assoc.send_c_store(path)  # type: ignore[attr-defined]
            except (OSError, RuntimeError):
                status = None
            code = getattr(status, "Status", None)
            if code == 0x0000:
                self.acknowledged.add(sop)
                self.acknowledged_in_order.append(sop)
                del self.pending[sop]
                self.last_success_opened = opened
            elif code is None:  # the association broke: a new one, after a pause
                self.broken_associations += 1
                time.sleep(0.5)
                return
            else:
                self.refusals[code] += 1
                time.sleep(0.5)
                return

    def _pace(self) -> None:
        now = time.monotonic()
        if self._next_send > now:
            time.sleep(self._next_send - now)
        self._next_send = max(self._next_send, now) + self.interval


@dataclass
class Fault:
    name: str
    at: float  # when it was done (monotonic)
    recovered_after: float | None = None  # seconds until progress again
    # a broker node's: seconds until the receiver's events were confirmed again
    publishing_after: float | None = None


@dataclass
class Report:
    sent: int
    attempts: int
    acknowledged: int
    refusals: dict[int, int]
    broken_associations: int
    stored: int
    filed: int
    series: int
    converted: int
    dead_lettered: int
    lost: int
    duplicated: int
    faults: list[Fault] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        refused = ", ".join(f"0x{c:04X} x{n}" for c, n in sorted(self.refusals.items()))
        lines = [
            f"sent {self.sent} instances in {self.seconds:.0f} s; C-STOREs attempted "
            f"{self.attempts}; refused {refused or 'none'}; associations broken "
            f"{self.broken_associations}",
            f"acknowledged 0x0000 {self.acknowledged}; stored (data set equal to the sent) "
            f"{self.stored}; filed {self.filed}; series converted {self.converted} of "
            f"{self.series}; dead-lettered {self.dead_lettered}",
            f"LOST {self.lost}; DUPLICATED {self.duplicated}",
        ]
        for fault in self.faults:
            took = (
                "no recovery seen"
                if fault.recovered_after is None
                else (f"recovered in {fault.recovered_after:.1f} s")
            )
            if fault.publishing_after is not None:
                took = f"publishing again in {fault.publishing_after:.1f} s, filing {took}"
            lines.append(f"  {fault.name}: {took}")
        return lines


class Pipeline:
    """``dcmdb up`` and the ways of breaking it."""

    def __init__(
        self, dcmdb: Dcmdb, up: subprocess.Popen[bytes], cluster: Cluster | None = None
    ) -> None:
        self.dcmdb = dcmdb
        self.up = up
        self.cluster = cluster  # the RabbitMQ nodes dcmdb is given (None: the machine's)
        self._engine = create_engine(
            dcmdb.database_url.replace("postgresql://", "postgresql+psycopg://")
        )

    def service_pid(self, name: str) -> int | None:
        for pid, ppid, cmdline in _processes():
            if ppid == self.up.pid and cmdline[-2:-1] == [name.encode()]:
                return pid
        return None

    def kill(self, name: str) -> None:
        """SIGKILL, and back once the process is dead: what it did is all done by then."""
        pid = self.service_pid(name)
        assert pid is not None, f"no {name} process to kill"
        os.kill(pid, signal.SIGKILL)
        assert wait(lambda: not _alive(pid), 10) is not None, f"{name} outlived SIGKILL"

    def converting(self) -> bool:
        """A conversion runs now: the converter's fork server has a child."""
        converter = self.service_pid("converter")
        if converter is None:
            return False
        children = _children_of({converter})
        return bool(_children_of(children))

    def filed(self) -> int:
        return self._scalar("SELECT count(*) FROM instances")

    def filed_any(self, sops: list[str]) -> bool:
        """Whether one of these SOP instances is in the catalog."""
        if not sops:
            return False
        with self._engine.connect() as connection:
            query = text("SELECT 1 FROM instances WHERE sop_instance_uid IN :sops LIMIT 1")
            query = query.bindparams(bindparam("sops", expanding=True))
            return connection.execute(query, {"sops": sops}).first() is not None

    def published(self) -> int:
        """The receiver's ``instance.received`` events the broker confirmed, from its
        side port (counted since the receiver started)."""
        metrics = httpx.get(self.dcmdb.side_url("receiver", "/metrics"), timeout=10).text
        for line in metrics.splitlines():
            if line.startswith('dcmdb_events_published_total{event="instance.received"}'):
                return int(float(line.split()[-1]))
        return 0

    def broker_node(self) -> Node:
        """The cluster node most of dcmdb's connections are on."""
        assert self.cluster is not None
        vhost = self.dcmdb.broker_url.split(",")[0].rsplit("/", 1)[1]
        out = self.cluster.ctl(
            self.cluster.any_running(), "list_connections", "vhost", "port", "--formatter", "json"
        )
        ports = Counter(c["port"] for c in json.loads(out) if c["vhost"] == vhost)
        port = ports.most_common(1)[0][0]
        return next(node for node in self.cluster.nodes if node.amqp_port == port)

    def converted(self) -> int:
        return self._scalar("SELECT count(*) FROM series WHERE conversion = 'converted'")

    def rows_per_instance(self) -> Counter[str]:
        with self._engine.connect() as connection:
            rows = connection.execute(text("SELECT sop_instance_uid, path FROM instances"))
            return Counter(row[0] for row in rows)

    def outputs_per_series(self) -> Counter[str]:
        with self._engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT s.series_instance_uid FROM nifti_outputs n "
                    "JOIN series s ON n.series_pk = s.id"
                )
            )
            return Counter(row[0] for row in rows)

    def dead_lettered(self) -> int:
        async def count() -> int:
            connection = await connect(self.dcmdb.broker_url, name="fault-run")
            try:
                return sum((await dead_letter_counts(connection, Topology())).values())
            finally:
                await connection.close()

        return asyncio.run(count())

    def _scalar(self, sql: str) -> int:
        try:
            with self._engine.connect() as connection:
                return int(connection.execute(text(sql)).scalar() or 0)
        except Exception:  # not migrated yet
            return 0

    def close(self) -> None:
        self._engine.dispose()


def _processes() -> Iterator[tuple[int, int, list[bytes]]]:
    """(pid, parent pid, command line) of every process, from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(entry)
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        if stat is not None:
            yield int(entry.name), int(stat[1]), cmdline


def _alive(pid: int) -> bool:
    """Running, neither gone nor a zombie waiting for its parent to reap it."""
    stat = _stat(Path(f"/proc/{pid}"))
    return stat is not None and stat[0] != "Z"


def _stat(process: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name: state, parent pid, ...;
    None once the process has ended."""
    try:
        stat = (process / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _children_of(parents: set[int]) -> set[int]:
    return {pid for pid, ppid, _ in _processes() if ppid in parents}


def wait(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``condition`` held, or None if it did not within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def restart_rabbitmq(cluster: Cluster | None) -> None:
    """RabbitMQ stopped and started again: the nodes of ``cluster``, or the machine's."""
    if cluster is not None:
        cluster.stop_app()
        time.sleep(1.0)
        cluster.start_app()
        return
    rabbitmqctl = require_tool("rabbitmqctl")
    subprocess.run([rabbitmqctl, "-q", "stop_app"], check=True, capture_output=True)
    time.sleep(1.0)
    subprocess.run([rabbitmqctl, "-q", "start_app"], check=True, capture_output=True)


def fill_disk(folder: Path) -> Path:
    """All but a few KiB of the file system under ``folder`` taken by one file."""
    ballast = folder / "ballast"
    with open(ballast, "wb") as handle:
        for _ in range(20):
            stats = os.statvfs(folder)
            free = stats.f_bavail * stats.f_frsize
            try:
                os.posix_fallocate(handle.fileno(), 0, max(0, free - 16 * 1024))
                return ballast
            except OSError as exc:  # the receiver wrote meanwhile: measure again
                if exc.errno != errno.ENOSPC:
                    raise
                handle.truncate(0)
    raise AssertionError(f"could not fill the file system under {folder}")


def run(
    pipeline: Pipeline,
    workload: Workload,
    *,
    rounds: int = 1,
    rate: float = 50,
    settle_timeout: float = 240,
    schedule: Schedule | None = None,
) -> Report:
    """Send the workload while breaking the pipeline ``rounds`` times over; account for it.

    Each fault strikes once the sender's progress reaches its point; the sender may run
    a little past a point (``AHEAD``) before that fault has struck, never further, so
    that every fault strikes while it sends and has sending to recover with.
    """
    started = time.monotonic()
    sender = Sender(pipeline.dcmdb.port, workload.files, rate)
    share = 1 / rounds
    strikes = [
        ((r + fraction) * share, breaker)
        for r in range(rounds)
        for fraction, breaker in schedule or SCHEDULE
    ]
    # how far the sender may go while waiting for each strike: a little past the next one
    holds = [point + AHEAD * share for point, _ in strikes[1:]] + [1.0]
    faults: list[Fault] = []
    sender.hold_at(strikes[0][0] + AHEAD * share)
    sender.start()
    for (point, breaker), hold in zip(strikes, holds, strict=True):
        sender.wait_for_progress(point)
        faults.append(breaker(pipeline, sender, functools.partial(sender.hold_at, hold)))
    sender.join(600)
    faults.append(_converter_killed(pipeline, len(workload.series)))
    everything = len(workload.files)
    wait(lambda: pipeline.filed() >= everything, settle_timeout)
    wait(lambda: pipeline.converted() >= len(workload.series), settle_timeout)
    report = account(pipeline, workload, sender)
    report.faults, report.seconds = faults, time.monotonic() - started
    return report


Struck = Callable[[], None]
"""Called by each fault once it has struck: the sender may go on to the next fault."""


def _receiver_killed(pipeline: Pipeline, sender: Sender, struck: Struck) -> Fault:
    fault = Fault("receiver killed (-9) mid-association", time.monotonic())
    pipeline.kill("receiver")
    struck()
    fault.recovered_after = wait(lambda: sender.last_success_opened > fault.at, 120)
    return fault


def _sorter_killed(pipeline: Pipeline, sender: Sender, struck: Struck) -> Fault:
    fault = Fault("sorter killed (-9)", time.monotonic())
    pipeline.kill("sorter")
    struck()
    before = pipeline.filed()
    fault.recovered_after = wait(lambda: pipeline.filed() > before, 120)
    return fault


def _rabbitmq_restarted(pipeline: Pipeline, sender: Sender, struck: Struck) -> Fault:
    fault = Fault("RabbitMQ restarted", time.monotonic())
    restart_rabbitmq(pipeline.cluster)
    struck()
    before = pipeline.filed()
    fault.recovered_after = wait(lambda: pipeline.filed() > before, 120)
    return fault


def _disk_filled(pipeline: Pipeline, sender: Sender, struck: Struck) -> Fault:
    ballast = fill_disk(pipeline.dcmdb.data_dir)
    struck()
    refusals = sum(sender.refusals.values())
    wait(lambda: sum(sender.refusals.values()) > refusals, 30)  # the sender hears 0xA700
    ballast.unlink()
    fault = Fault("data disk full, then freed", time.monotonic())
    fault.recovered_after = wait(lambda: sender.last_success_opened > fault.at, 120)
    return fault


def _broker_node_killed(pipeline: Pipeline, sender: Sender, struck: Struck) -> Fault:
    """The cluster node dcmdb's services are on killed (-9), once the node killed before
    is back and caught up; started again once the pipeline recovered."""
    assert pipeline.cluster is not None, "a broker node's fault needs the cluster"
    node = pipeline.broker_node()
    pipeline.cluster.await_quorum_safe(node)
    published = pipeline.published()
    acknowledged = len(sender.acknowledged_in_order)
    fault = Fault(f"broker node {node.name} killed (-9)", time.monotonic())
    pipeline.cluster.kill(node)
    struck()
    fault.publishing_after = wait(lambda: pipeline.published() > published, 120)

    def filed_after_the_kill() -> bool:
        after = sender.acknowledged_in_order[acknowledged : acknowledged + 500]
        return pipeline.filed_any(after)

    if wait(filed_after_the_kill, 120) is not None:  # seconds since the kill, not since then
        fault.recovered_after = time.monotonic() - fault.at
    pipeline.cluster.restart(node)
    return fault


Schedule = tuple[tuple[float, Callable[[Pipeline, Sender, Struck], Fault]], ...]

#: Where in each round's share of the sending each fault strikes, in order.
SCHEDULE: Schedule = (
    (0.10, _receiver_killed),
    (0.30, _sorter_killed),
    (0.45, _rabbitmq_restarted),
    (0.60, _disk_filled),
    (0.80, _sorter_killed),
)
#: Against a RabbitMQ cluster: the node dcmdb is on killed, and later the one it moved to.
CLUSTER_SCHEDULE: Schedule = (
    (0.25, _broker_node_killed),
    (0.60, _broker_node_killed),
)
#: How far (in a round's share) the sender may run past a fault's point before it struck.
AHEAD = 0.05


def _converter_killed(pipeline: Pipeline, series: int) -> Fault:
    seen = wait(pipeline.converting, 120)
    killed = pipeline.service_pid("converter")
    fault = Fault(
        "converter killed (-9) mid-conversion" if seen is not None else "converter killed (-9)",
        time.monotonic(),
    )
    pipeline.kill("converter")
    before = pipeline.converted()

    def recovered() -> bool:  # converting again; or, with nothing left, running again
        if pipeline.converted() > before:
            return True
        pid = pipeline.service_pid("converter")
        return before == series and pid is not None and pid != killed

    fault.recovered_after = wait(recovered, 180)
    return fault


def account(pipeline: Pipeline, workload: Workload, sender: Sender) -> Report:
    archive = pipeline.dcmdb.data_dir / "archive"
    stored_digests: dict[str, list[str]] = {}
    for path in archive.rglob("*.dcm"):
        sop = _sop_of(path)
        stored_digests.setdefault(sop, []).append(data_set_digest(path))
    stored = {s for s, d in stored_digests.items() if d == [workload.digests.get(s)]}
    rows = pipeline.rows_per_instance()
    filed = {sop for sop in rows if sop in workload.files}
    outputs = pipeline.outputs_per_series()
    duplicated = (
        sum(n - 1 for n in rows.values() if n > 1)
        + sum(len(d) - 1 for d in stored_digests.values() if len(d) > 1)
        + sum(n - 1 for n in outputs.values() if n > 1)
    )
    return Report(
        sent=len(workload.files),
        attempts=sender.attempts,
        acknowledged=len(sender.acknowledged),
        refusals=dict(sender.refusals),
        broken_associations=sender.broken_associations,
        stored=len(stored),
        filed=len(filed),
        series=len(workload.series),
        converted=pipeline.converted(),
        dead_lettered=pipeline.dead_lettered(),
        lost=len(sender.acknowledged - (stored & filed)),
        duplicated=duplicated,
    )


def _sop_of(path: Path) -> str:
    header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(header.SOPInstanceUID)

"""Running dcmdb and DCMTK peers the way a user would: as processes, on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from sqlalchemy import Engine, create_engine, inspect, select
from sqlalchemy.orm import Session, selectinload

from shared.catalog.models import Instance, Series
from shared.catalog.states import Completion, ConversionState
from shared.settings import METRICS_PORTS
from tests.conftest import REPO, require_tool
from tests.support import accepts, free_port, wait_for

AE_TITLE = "DCMDB"


def dcmtk_env() -> dict[str, str]:
    # Without it DCMTK waits for Nagle's algorithm on every message on loopback.
    return {**os.environ, "TCP_NODELAY": "1"}


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``512k``) mounted on ``path``, which fills up for real.
    Mounting needs root, as the test command runs."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"cannot mount a small tmpfs: {mounted.stderr}"
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def echo(port: int, called_ae: str = AE_TITLE, calling_ae: str = "ECHOSCU") -> bool:
    result = subprocess.run(
        [require_tool("echoscu"), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        timeout=30,
    )
    return result.returncode == 0


def storescu(
    port: int,
    paths: Iterable[Path],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = AE_TITLE,
    extra: Iterable[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Send files (folders are scanned recursively), each in its own transfer syntax."""
    command = [
        require_tool("storescu"),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "+sd",
        "+r",
        "-nh",  # no "halt on first invalid file": send the rest
        *extra,
        "127.0.0.1",
        str(port),
        *[str(p) for p in paths],
    ]
    return subprocess.run(command, env=dcmtk_env(), capture_output=True, text=True, timeout=600)


# storescu proposes explicit VR little endian first (and converts to it), and
# no compressed syntax at all, unless told otherwise.
_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
}


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM Part 10 files under ``folder`` (what storescu can send as they are)."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    files.append(path)
    return files


def send_dicom(port: int, files: Iterable[Path], **options: object) -> None:
    """Send each file in its own transfer syntax with storescu; fail on any refusal."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(_PROPOSE.get(syntax, ""), []).append(path)
    for flag, paths in groups.items():
        result = storescu(port, paths, extra=[flag] if flag else [], **options)  # type: ignore[arg-type]
        assert result.returncode == 0 and "E:" not in result.stderr, result.stderr[-3000:]


@dataclass
class Dcmdb:
    """dcmdb started as ``dcmdb <command>`` with its settings in the environment."""

    data_dir: Path
    broker_url: str
    database_url: str
    port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    # Each service's side port (/metrics, /healthz, /readyz), so that dcmdb instances started
    # at once never share one.
    metrics_ports: dict[str, int] = field(
        default_factory=lambda: {service: free_port() for service in METRICS_PORTS}
    )
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _started: set[str] = field(default_factory=set)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DCMDB_DATA_DIR": str(self.data_dir),
            "DCMDB_BROKER_URL": self.broker_url,
            "DCMDB_DATABASE_URL": self.database_url,
            "DCMDB_DICOM_PORT": str(self.port),
            "DCMDB_API_PORT": str(self.api_port),
            "DCMDB_AE_TITLE": AE_TITLE,
            "DCMDB_SWEEP_INTERVAL": "2",
            "DCMDB_METRICS_PORTS": ",".join(f"{s}:{p}" for s, p in self.metrics_ports.items()),
            **self.extra_env,
        }

    @property
    def log_path(self) -> Path:
        return self.log_path_of("dcmdb")

    def log_path_of(self, name: str) -> Path:
        return self.data_dir.parent / f"{name}.log"

    def start(
        self, command: str = "up", *, name: str = "dcmdb", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run ``dcmdb <command>``, its output in the log called ``name``, with ``env`` added.
        A service started a second time (beside ``up``'s, say) gets a side port of its own."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        services = set(METRICS_PORTS) if command == "up" else {command} & set(METRICS_PORTS)
        for service in services & self._started:
            self.metrics_ports[service] = free_port()
        self._started |= services
        side = {}
        if command in METRICS_PORTS:
            side["DCMDB_METRICS_PORT"] = str(self.metrics_ports[command])
        log = open(self.log_path_of(name), "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "services.commands.cli", command],
            cwd=REPO,
            env={**self.env, **side, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def wait_until_listening(self, timeout: float = 60) -> None:
        # A connect is cheap; echoscu is a process: it is started once something listens.
        wait_for(lambda: accepts(self.port), timeout, "the receiver to listen")
        wait_for(lambda: echo(self.port), timeout, "the receiver to answer C-ECHO", 0.25)

    def wait_until_api_answers(self, timeout: float = 60) -> None:
        wait_for(lambda: _healthy(self.api_port), timeout, "the API to answer /healthz")

    def side_url(self, service: str, path: str) -> str:
        """A URL on a service's side port (the API's own port for the API)."""
        port = self.api_port if service == "api" else self.metrics_ports[service]
        return f"http://127.0.0.1:{port}{path}"

    def log(self, name: str = "dcmdb") -> str:
        path = self.log_path_of(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


@contextmanager
def everything(root: Path, broker_url: str, database_url: str, **env: str) -> Iterator[Dcmdb]:
    """``dcmdb up`` on a data directory in ``root``, listening, with ``env`` added."""
    system = Dcmdb(root / "data", broker_url, database_url, extra_env=env)
    system.start("up")
    try:
        system.wait_until_listening()
        yield system
    finally:
        system.stop()


@contextmanager
def receiver_alone(
    root: Path, broker_url: str, env: dict[str, str] | None = None
) -> Iterator[Dcmdb]:
    """``dcmdb receiver`` alone: what it accepts stays in incoming/ for a test to look at."""
    system = Dcmdb(root / "data", broker_url, f"sqlite:///{root / 'catalog.sqlite'}")
    system.extra_env.update(env or {})
    system.start("receiver")
    try:
        system.wait_until_listening()
        yield system
    finally:
        system.stop()


def send_raw(port: int, path: Path, *, calling_ae: str = "RAWSCU") -> int:
    """C-STORE the data set bytes of ``path`` exactly as they are in the file; the status."""
    return int(send_raw_answer(port, path, calling_ae=calling_ae).Status)


def send_raw_answer(port: int, path: Path, *, calling_ae: str = "RAWSCU") -> Dataset:
    """C-STORE the data set bytes of ``path`` exactly as they are in the file; the answer.

    DCMTK refuses to send a malformed object, so hostile input goes through
    pynetdicom's chunked sending, which copies the bytes after the file meta
    information without parsing them.
    """
    from pynetdicom import AE, _config

    from shared.pacs import tuned_requestor

    _config.STORE_SEND_CHUNKED_DATASET = True
    meta = read_file_meta_info(path)
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established, "association refused"
    tuned_requestor(assoc)
    try:
        status = assoc.send_c_store(path)
        assert "Status" in status, "no response to the C-STORE"
        return status
    finally:
        assoc.release()


def migrated(engine: Engine) -> bool:
    """Whether the services have created the catalog's tables yet. They migrate in one
    transaction, so once a table is there, every table and column is; any other error
    while reading the catalog is a failure of the test, not a reason to wait."""
    return inspect(engine).has_table("alembic_version")


def catalog(url: str) -> tuple[list[Series], list[Instance]]:
    """The series (with their NIfTI outputs) and the instances the catalog at ``url`` holds."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        if not migrated(engine):
            return [], []
        with Session(engine) as session:
            series = list(session.scalars(select(Series).options(selectinload(Series.outputs))))
            return series, list(session.scalars(select(Instance)))
    finally:
        engine.dispose()


def settled(url: str, sop_uids: set[str]) -> bool:
    """Every instance filed, every series complete and its newest generation converted."""
    series, instances = catalog(url)
    return (
        {i.sop_instance_uid for i in instances} == sop_uids
        and all(
            s.completion == Completion.COMPLETE
            and s.conversion != ConversionState.PENDING
            and s.converted_generation == s.generation
            for s in series
        )
        and bool(series)
    )


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key, made by openssl in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key

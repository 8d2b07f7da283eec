"""What the benchmarks share: DCMTK's tools, free ports, child processes, a RabbitMQ vhost."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import closing, suppress
from pathlib import Path

HOST = "127.0.0.1"
Proc = subprocess.Popen[bytes]


class Children:
    """Long-running children, each in its own session so that its whole group can be killed."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.live: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Proc:
        with open(self.logdir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,
            )  # fmt: skip
        self.live.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 30.0) -> None:
        """SIGTERM the leader (it stops its own children), then SIGKILL the rest of its group."""
        if proc.poll() is None:
            proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.live):
            self.stop(proc, grace=10.0)


def dcmtk(name: str) -> str:
    """DCMTK's tool, not pynetdicom's namesake in the virtualenv's bin/."""
    venv_bin = os.path.realpath(os.path.join(sys.prefix, "bin"))
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if os.path.realpath(p) != venv_bin
    )
    found = shutil.which(name, path=path)
    if found is None:
        raise SystemExit(f"{name} not found: install DCMTK (apt-get install dcmtk)")
    return found


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def run(argv: list[str], check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class Vhost:
    """A throw-away RabbitMQ vhost for the dcmdb targets, recreated empty for every round."""

    def __init__(self) -> None:
        self.name, self.exists = f"dcmdb-bench-{uuid.uuid4().hex[:8]}", False
        self.url = f"amqp://guest:guest@{HOST}:5672/{self.name}"

    def recreate(self) -> None:
        self.delete()
        run(["rabbitmqctl", "-q", "add_vhost", self.name])
        self.exists = True
        run(["rabbitmqctl", "-q", "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"])

    def delete(self) -> None:
        if self.exists:
            run(["rabbitmqctl", "-q", "delete_vhost", self.name], check=False)
            self.exists = False


def clean_up(children: Children, vhost: Vhost, work: Path, keep: bool) -> None:
    """Stop every child, delete the vhost, and the work directory unless it is kept."""
    children.stop_all()
    vhost.delete()
    if keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def session_cpu(session: int) -> float:
    """CPU seconds (user + system) of the live processes in a session (`Children` starts each
    child as a session leader, so its pid is the session's id)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[3]) == session:
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def quiet(what: str, proc: Proc, window: float = 1.0, busy: float = 0.05) -> None:
    """Until `proc`'s session used under `busy` of a core for `window` seconds: the converter's
    fork server, say, still runs its practice conversion after the converter said it is ready."""
    deadline = time.monotonic() + 120
    while True:
        before = session_cpu(proc.pid)
        time.sleep(window)
        if session_cpu(proc.pid) - before < busy * window:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not settle down within 120 s")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def wait_until(what: str, ready: Callable[[], bool], proc: Proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


# The environment of peers and DCMTK tools: no DCMDB_ settings of the caller, no 40 ms
# Nagle stalls on loopback.
NODELAY_ENV = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
NODELAY_ENV["TCP_NODELAY"] = "1"


def echo_ok(ae: str, port: int) -> bool:
    argv = [dcmtk("echoscu"), "-aec", ae, "-to", "2", HOST, str(port)]
    return subprocess.run(argv, capture_output=True, env=NODELAY_ENV).returncode == 0


# Orthanc's DICOMweb plugin (Debian: orthanc-dicomweb), the DICOMweb benchmarks' peer.
ORTHANC_DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_dicomweb_config(base: Path, http_port: int) -> dict[str, object]:
    """An Orthanc with its DICOMweb plugin at /dicom-web/, its files under `base`."""
    return {
        "Name": "dcmdb-bench", "StorageDirectory": str(base / "storage"),
        "IndexDirectory": str(base / "index"), "HttpPort": http_port, "DicomPort": free_port(),
        "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "KeepAlive": True, "TcpNoDelay": True, "StorageCompression": False,
        "StableAge": 1, "SaveJobs": False, "Plugins": [str(ORTHANC_DICOMWEB)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }  # fmt: skip

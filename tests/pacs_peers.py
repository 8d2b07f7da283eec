"""Real PACS peers for the retrieval tests: DCMTK's dcmqrscp, Orthanc, and storescp.

Each runs as a process of its own on free ports, with its configuration and data
in a temporary folder, and is stopped (terminate, wait, kill) with everything it
started when its ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import httpx

from tests.conftest import require_tool
from tests.support import free_port, wait_for
from tests.system import dcmtk_env, echo, send_dicom

ORTHANC = "/usr/sbin/Orthanc"


class _Process:
    """A server process in a session of its own, so that stopping it stops its children."""

    process: subprocess.Popen[bytes] | None = None
    log_path: Path

    def _start(self, command: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=dcmtk_env(),  # TCP_NODELAY=1 for DCMTK and Orthanc alike
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _check_running(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.log_path.stem} exited at start:\n{self.log()[-3000:]}")
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()
        self._signal(signal.SIGKILL)  # forked children still in its session
        self.process = None

    def _signal(self, number: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, number)  # its own session: the group id is its pid

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exception: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError


class StoreScp(_Process):
    """DCMTK's storescp: a move destination that writes each instance it gets into ``folder``."""

    def __init__(self, folder: Path, ae_title: str = "DCMDB", port: int | None = None) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = port or free_port()
        self.log_path = folder.parent / f"storescp-{self.port}.log"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # +xa: any transfer syntax; -pm: any SOP class; +B: the bytes as sent.
        self._start(
            [require_tool("storescp"), "-v", "-aet", self.ae_title, "+xa", "-pm", "+B"]
            + ["-od", str(self.folder), "-fe", ".dcm", str(self.port)]
        )
        wait_for(lambda: self._check_running() and echo(self.port, self.ae_title), 30, "storescp")

    def received(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    def clear(self) -> None:
        for path in self.received():
            path.unlink()


class Dcmqrscp(_Process):
    """DCMTK's dcmqrscp: a small PACS answering C-FIND, C-MOVE and C-GET.

    It moves to ``destination`` = (AE title, host, port), the only AE title its
    HostTable knows besides the query tools; everyone may query and store.
    """

    name = "dcmqrscp"
    # It answers neither ModalitiesInStudy nor the Number Of ... Related ... keys.
    gives_counts = False

    def __init__(
        self,
        folder: Path,
        destination: tuple[str, str, int],
        ae_title: str = "DCMQRSCP",
    ) -> None:
        self.folder = folder
        self.destination = destination
        self.ae_title = ae_title
        self.port = free_port()
        self.log_path = folder / "dcmqrscp.log"

    def config(self) -> str:
        storage = self.folder / "db"
        dest_ae, dest_host, dest_port = self.destination
        return f"""\
NetworkTCPPort  = {self.port}
MaxPDUSize      = 65536
MaxAssociations = 16

HostTable BEGIN
dcmdb    = ({dest_ae}, {dest_host}, {dest_port})
storescu = (STORESCU, localhost, 104)
findscu  = (FINDSCU, localhost, 104)
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{self.ae_title} {storage} RW (1000, 4096mb) ANY
AETable END
"""

    def start(self) -> None:
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        config = self.folder / "dcmqrscp.cfg"
        config.write_text(self.config())
        self._start([require_tool("dcmqrscp"), "-v", "-dhl", "-c", str(config)])
        wait_for(lambda: self._check_running() and echo(self.port, self.ae_title), 30, "dcmqrscp")

    def fill(self, files: Iterable[Path]) -> None:
        send_dicom(self.port, files, called_ae=self.ae_title)


class Orthanc(_Process):
    """Orthanc with its DICOM and HTTP ports free, moving to ``destination`` as ``dcmdb``."""

    name = "orthanc"
    gives_counts = True

    def __init__(
        self,
        folder: Path,
        destination: tuple[str, str, int],
        ae_title: str = "ORTHANC",
    ) -> None:
        self.folder = folder
        self.destination = destination
        self.ae_title = ae_title
        self.port = free_port()
        self.http_port = free_port()
        self.log_path = folder / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, object]:
        return {
            "Name": "dcmdb-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.ae_title,
            "DicomModalities": {"dcmdb": list(self.destination)},
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "SynchronousCMove": True,
            "SaveJobs": False,
            "Plugins": [],
        }

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        self._start([ORTHANC, str(config)])
        wait_for(lambda: self._check_running() and self._answers(), 60, "Orthanc")

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/system", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def fill(self, files: Iterable[Path]) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for path in files:
                answer = client.post("/instances", content=path.read_bytes())
                assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text}"

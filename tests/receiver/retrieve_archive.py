"""An archive of studies of two labs, filed by the sorter's own code, and `dcmdb receiver`
serving it to the labs' desktops: what the C-MOVE and C-GET tests retrieve.

The studies are real series under new UIDs: lab A's "mr" (siemens_xa30_t1w_3d_classic,
96 slices, for cancelling in the middle) and "syntaxes" (siemens_transfer_syntaxes: one
image in 9 transfer syntaxes, JPEG, JPEG-LS, JPEG 2000 and RLE among them), lab B's "b"
(d2n_hitachi_mr, implicit VR), and lab A's "gone", being evicted, which nobody retrieves.
Lab A's desktop is DESK_A, lab B's DESK_B; a test gives each the port of its own listener.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from sqlalchemy import select, update

from services.sorter.filing import Filer
from shared import keys
from shared.catalog.database import create_catalog_engine, open_catalog, session_factory
from shared.catalog.models import AuditEvent, Instance, Study
from shared.headers import STORED_TRANSFER_SYNTAXES, meta_places
from shared.naming import physician_folder
from shared.pacs import tuned_requestor
from tests.arrivals import arrive, dicom_files, with_new_uids
from tests.conftest import fresh_vhost, require_tool
from tests.support import free_port
from tests.system import AE_TITLE, Dcmdb, dcmtk_env

LAB_A, LAB_B = "RESEARCH^ALPHA", "RESEARCH^BETA"
FOLDER_A, FOLDER_B = physician_folder(LAB_A), physician_folder(LAB_B)
DESK_A, DESK_B = "DESK_A", "DESK_B"
# name: (test data folder, physician, patient ID)
STUDIES = {
    "mr": ("siemens_xa30_t1w_3d_classic", LAB_A, "PA001"),
    "syntaxes": ("siemens_transfer_syntaxes", LAB_A, "PA002"),
    "b": ("d2n_hitachi_mr", LAB_B, "PB001"),
    "gone": ("d2n_hitachi_mr", LAB_A, "PA001"),
}


@dataclass
class FiledStudy:
    uid: str
    series: dict[str, list[str]] = field(default_factory=dict)  # series: SOP instances

    @property
    def instances(self) -> list[str]:
        return [uid for uids in self.series.values() for uid in uids]


def data_set_digest(content: bytes) -> str:
    """The SHA-256 of a DICOM file's data set: what a C-STORE carries, whatever file meta
    information the receiving side writes around it."""
    _, start = meta_places(content)
    return hashlib.sha256(content[start:]).hexdigest()


def file_studies(data: Path, url: str, testdata: Path) -> dict[str, FiledStudy]:
    """File `STUDIES` into `data`'s archive and the catalog at `url`; mark "gone" evicting."""
    engine, sessions = open_catalog(url, writer=True)
    filer = Filer(sessions, data, data / "archive", data / "quarantine")
    filed: dict[str, FiledStudy] = {}
    try:
        for name, (folder, physician, patient_id) in STUDIES.items():
            study = FiledStudy(generate_uid())
            series = generate_uid()
            events = []
            for path in dicom_files(testdata, folder):
                content = with_new_uids(
                    path, study=study.uid, series=series, ReferringPhysicianName=physician,
                    PatientID=patient_id, PatientName=f"TEST^{patient_id}",
                )  # fmt: skip
                events.append(arrive(content, data))
                study.series.setdefault(series, []).append(events[-1].sop_instance_uid)
            filer.file_batch(events)
            filed[name] = study
        with sessions.begin() as session:
            session.execute(
                update(Study)
                .where(Study.study_instance_uid == filed["gone"].uid)
                .values(evicting_at=datetime.now(UTC))
            )
    finally:
        engine.dispose()
    return filed


@dataclass
class RetrieveArchive:
    """`dcmdb receiver` over the filed studies."""

    dcmdb: Dcmdb
    studies: dict[str, FiledStudy]
    url: str

    @property
    def port(self) -> int:
        return self.dcmdb.port

    @property
    def keys_file(self) -> Path:
        return self.dcmdb.data_dir / "keys.yaml"

    def uid(self, name: str) -> str:
        return self.studies[name].uid

    def desktop(self, ae_title: str, port: int, labs: Iterable[str] | str) -> None:
        """Add or replace a desktop, as `dcmdb desktops` does; the receiver reads it at once."""
        entry = keys.DesktopEntry(
            ae_title=ae_title,
            host="127.0.0.1",
            port=port,
            labs="all" if labs == "all" else tuple(labs),
        )
        with keys.editing(self.keys_file) as document:
            document.desktops[:] = [d for d in document.desktops if d.ae_title != ae_title]
            document.desktops.append(entry)

    def archived(self, *names: str) -> dict[str, str]:
        """SOP Instance UID: data set digest of the archived files of these studies."""
        return {uid: data_set_digest(path.read_bytes()) for uid, path in self.files(*names).items()}

    def files(self, *names: str) -> dict[str, Path]:
        """SOP Instance UID: the archived file, of these studies."""
        wanted = {uid for name in names for uid in self.studies[name].instances}
        engine = create_catalog_engine(self.url)
        try:
            with session_factory(engine)() as session:
                rows = session.execute(select(Instance.sop_instance_uid, Instance.path))
                paths = {uid: path for uid, path in rows if uid in wanted}
        finally:
            engine.dispose()
        archive = self.dcmdb.data_dir / "archive"
        return {uid: archive / path for uid, path in paths.items()}

    def audit(self) -> list[AuditEvent]:
        engine = create_catalog_engine(self.url)
        try:
            with session_factory(engine)() as session:
                return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        finally:
            engine.dispose()


def received(folder: Path) -> dict[str, str]:
    """SOP Instance UID: data set digest of the files a DCMTK tool wrote into `folder`."""
    found = {}
    for path in folder.iterdir():
        if path.is_file():
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            found[uid] = data_set_digest(path.read_bytes())
    return found


@contextmanager
def retrieve_archive(root: Path, testdata: Path) -> Iterator[RetrieveArchive]:
    """The studies filed into an SQLite catalog in `root`, and `dcmdb receiver` over them
    (with a RabbitMQ virtual host of its own, for the instances it receives)."""
    url = f"sqlite:///{root / 'catalog.sqlite'}"
    vhosts = fresh_vhost()
    dcmdb = Dcmdb(root / "data", next(vhosts), url)
    try:
        studies = file_studies(dcmdb.data_dir, url, testdata)
        dcmdb.start("receiver")
        dcmdb.wait_until_listening()
        yield RetrieveArchive(dcmdb, studies, url)
    finally:
        dcmdb.stop()
        next(vhosts, None)


def dcmtk_retrieve(
    tool: str, port: int, calling_ae: str, keys_: list[str], *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """DCMTK's movescu or getscu against the receiver, with `-k` keys; verbose, so that its
    output shows each response's status and counts."""
    command = [require_tool(tool), "-v", "-aet", calling_ae, "-aec", AE_TITLE, *args]
    for key in keys_:
        command += ["-k", key]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [*command, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


# pynetdicom as the desktop ------------------------------------------------------------------

STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
Response = tuple[Dataset, Dataset | None]
ABORT = -1  # what a `Destination` answers to abort the association


def identifier(level: str, **keys_: object) -> Dataset:
    found = Dataset()
    found.QueryRetrieveLevel = level
    for keyword, value in keys_.items():
        setattr(found, keyword, value)
    return found


def scu_move(
    port: int,
    calling_ae: str,
    destination: str,
    query: Dataset,
    *,
    model: str = STUDY_MOVE,
    cancel_after: int | None = None,
    cancelled: Callable[[], None] = lambda: None,
) -> list[Response]:
    """A C-MOVE by pynetdicom: every response, the final one last. With `cancel_after`, a
    C-CANCEL once that many sub-operations completed (or failed), then `cancelled()`."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established, "association refused"
    tuned_requestor(assoc)
    responses = []
    try:
        for status, found in assoc.send_c_move(query, destination, model, msg_id=7):
            responses.append((status, found))
            done = status.get("NumberOfCompletedSuboperations", 0) + status.get(
                "NumberOfFailedSuboperations", 0
            )
            if cancel_after is not None and status.Status == 0xFF00 and done == cancel_after:
                assoc.send_c_cancel(7, query_model=model)
                cancelled()
    finally:
        assoc.release()
    return responses


@dataclass
class Got:
    """What a C-GET by pynetdicom brought back."""

    responses: list[Response]
    data_sets: dict[str, bytes]  # SOP Instance UID: the data set as received
    transfer_syntaxes: set[str]


def scu_get(
    port: int,
    calling_ae: str,
    query: Dataset,
    sop_classes: Iterable[str],
    *,
    model: str = STUDY_GET,
    syntaxes: Iterable[str] | None = None,
) -> Got:
    """A C-GET by pynetdicom, taking the SCP role for `sop_classes` in each of `syntaxes`
    (by default every one dcmdb stores), a context for each."""
    got = Got([], {}, set())

    def on_store(event: evt.Event) -> int:
        got.data_sets[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        got.transfer_syntaxes.add(str(event.context.transfer_syntax))
        return 0x0000

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(model)
    roles = []
    for sop_class in sop_classes:
        for syntax in syntaxes or STORED_TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=AE_TITLE, ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established, "association refused"
    tuned_requestor(assoc)
    try:
        got.responses = list(assoc.send_c_get(query, model, msg_id=9))
    finally:
        assoc.release()
    return got


def final(responses: list[Response]) -> Dataset:
    status, _ = responses[-1]
    return status


@dataclass
class Destination:
    """A move destination by pynetdicom, in this process: what it stores, with the Move
    Originator of each C-STORE; `answer` decides each C-STORE's status (ABORT: the
    destination aborts the association instead)."""

    ae_title: str
    syntaxes: list[str]
    answer: Callable[[int], int] = lambda number: 0x0000
    port: int = field(default_factory=free_port)
    stored: dict[str, bytes] = field(default_factory=dict)
    calls: int = 0
    originators: set[tuple[str, int]] = field(default_factory=set)
    transfer_syntaxes: set[str] = field(default_factory=set)

    @contextmanager
    def running(self) -> Iterator[Destination]:
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, context.abstract_syntax), self.syntaxes)
        server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        try:
            yield self
        finally:
            server.shutdown()

    def _store(self, event: evt.Event) -> int:
        request = event.request
        self.calls += 1
        status = self.answer(self.calls)
        if status == ABORT:
            event.assoc.abort()
            return 0xA700
        if status == 0x0000:
            self.stored[str(request.AffectedSOPInstanceUID)] = request.DataSet.getvalue()
            self.transfer_syntaxes.add(str(event.context.transfer_syntax))
        self.originators.add(
            (str(request.MoveOriginatorApplicationEntityTitle), request.MoveOriginatorMessageID)
        )
        return status


def digests(data_sets: dict[str, bytes]) -> dict[str, str]:
    return {uid: hashlib.sha256(data).hexdigest() for uid, data in data_sets.items()}

"""An archive of known studies of two labs, filed by the sorter's own code, and `dcmdb
receiver` serving it to the labs' desktops: what the C-FIND tests query.

The studies are small real series (d2n_hitachi_mr, 4 MR slices; pydicom's CT_small) under
new UIDs, with the patients, dates and descriptions below. Lab A's desktop is DESK_A, lab
B's DESK_B; ALL_LABS sees both; any other calling AE title is no desktop.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import update

from services.sorter.filing import Filer
from shared import keys
from shared.catalog.database import open_catalog
from shared.catalog.models import Patient, Study
from shared.naming import physician_folder
from shared.pacs import tuned_requestor
from tests.arrivals import arrive, dicom_files, with_new_uids
from tests.conftest import require_tool
from tests.support import free_port
from tests.system import AE_TITLE, Dcmdb, dcmtk_env

LAB_A, LAB_B = "RESEARCH^ALPHA", "RESEARCH^BETA"
FOLDER_A, FOLDER_B = physician_folder(LAB_A), physician_folder(LAB_B)
DESK_A, DESK_B, ALL_LABS = "DESK_A", "DESK_B", "DESK_ALL"
ELSEWHERE = "DESK_ELSEWHERE"  # a desktop of lab A at another host than the tests'

MR, CT = "d2n_hitachi_mr", "pydicom_small_singles"


@dataclass(frozen=True)
class SeriesSpec:
    source: str  # a test data folder
    modality: str
    number: int
    description: str
    files: int = 4  # how many of the folder's files


@dataclass(frozen=True)
class StudySpec:
    name: str  # what the tests call it
    physician: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    description: str
    series: tuple[SeriesSpec, ...]
    study_id: str = ""
    charset: str = "ISO_IR 100"


STUDIES = (
    StudySpec("a1", LAB_A, "DOE^JANE", "PA001", "19800101", "F", "20240115", "101500",
              "ACC-A1", "Brain^Research", (SeriesSpec(MR, "MR", 1, "t1 sag"),
                                           SeriesSpec(MR, "MR", 2, "t2 ax", files=2)),
              study_id="S-A1"),
    StudySpec("a2", LAB_A, "Müller^Jörg", "PA002", "19751231", "M", "20240220", "083000",
              "ACC-A2", "Knee left", (SeriesSpec(MR, "MR", 1, "pd cor"),
                                      SeriesSpec(CT, "CT", 2, "scout", files=1)),
              charset="ISO_IR 192"),
    # Filed before the catalog kept birth date, sex and Study ID (0011): they are NULL.
    StudySpec("a3", LAB_A, "DOE^JOHN", "PA003", "19900615", "M", "20231231", "235900",
              "ACC-A3", "Brain^Follow up", (SeriesSpec(MR, "MR", 1, "t1 sag"),),
              study_id="S-A3"),
    StudySpec("b1", LAB_B, "ROE^RICHARD", "PB001", "19651010", "M", "20240116", "140000",
              "ACC-B1", "Brain^Research", (SeriesSpec(MR, "MR", 1, "t1 sag"),)),
    # Patient PA001 again, in lab B: lab A must not see this study nor count it.
    StudySpec("b2", LAB_B, "DOE^JANE", "PA001", "19800101", "F", "20240117", "090000",
              "ACC-B2", "Spine", (SeriesSpec(CT, "CT", 1, "spine", files=1),)),
    # Being evicted: nobody finds it.
    StudySpec("gone", LAB_A, "DOE^JANE", "PA001", "19800101", "F", "20240118", "090000",
              "ACC-GONE", "Brain^Research", (SeriesSpec(MR, "MR", 1, "t1 sag", files=1),)),
)  # fmt: skip


@dataclass
class FiledSeries:
    uid: str
    spec: SeriesSpec
    instances: list[str]  # SOP Instance UIDs in InstanceNumber order


@dataclass
class FiledStudy:
    uid: str
    spec: StudySpec
    series: list[FiledSeries] = field(default_factory=list)

    @property
    def instances(self) -> int:
        return sum(len(s.instances) for s in self.series)


def file_studies(data: Path, url: str, testdata: Path) -> dict[str, FiledStudy]:
    """File `STUDIES` into `data`'s archive and the catalog at `url`; mark "gone" evicting."""
    engine, sessions = open_catalog(url, writer=True)
    filer = Filer(sessions, data, data / "archive", data / "quarantine")
    filed: dict[str, FiledStudy] = {}
    try:
        for spec in STUDIES:
            study = FiledStudy(generate_uid(), spec)
            events = []
            for series_spec in spec.series:
                series = FiledSeries(generate_uid(), series_spec, [])
                for number, path in enumerate(
                    dicom_files(testdata, series_spec.source)[: series_spec.files], start=1
                ):
                    content = with_new_uids(path, study=study.uid, series=series.uid,
                                            **_tags(spec, series_spec, number))  # fmt: skip
                    events.append(arrive(content, data))
                    series.instances.append(events[-1].sop_instance_uid)
                study.series.append(series)
            filer.file_batch(events)
            filed[spec.name] = study
        with sessions.begin() as session:
            session.execute(
                update(Study)
                .where(Study.study_instance_uid == filed["gone"].uid)
                .values(evicting_at=datetime.now(UTC))
            )
            session.execute(
                update(Study)
                .where(Study.study_instance_uid == filed["a3"].uid)
                .values(study_id=None)
            )
            session.execute(
                update(Patient)
                .where(Patient.patient_id == "PA003")
                .values(birth_date=None, sex=None)
            )
    finally:
        engine.dispose()
    return filed


def _tags(spec: StudySpec, series: SeriesSpec, number: int) -> dict[str, object]:
    return dict(
        SpecificCharacterSet=spec.charset, ReferringPhysicianName=spec.physician,
        PatientName=spec.patient_name, PatientID=spec.patient_id,
        PatientBirthDate=spec.birth_date, PatientSex=spec.sex, StudyDate=spec.study_date,
        StudyTime=spec.study_time, AccessionNumber=spec.accession,
        StudyDescription=spec.description, StudyID=spec.study_id, Modality=series.modality,
        SeriesNumber=series.number, SeriesDescription=series.description,
        InstanceNumber=number, SeriesDate=spec.study_date,
    )  # fmt: skip


def write_desktops(keys_file: Path, port: int) -> None:
    """The labs' desktops in the keys file, as `dcmdb desktops add` leaves them."""
    with keys.editing(keys_file) as document:
        for title, host, labs in (
            (DESK_A, "127.0.0.1", (FOLDER_A,)),
            (DESK_B, "127.0.0.1", (FOLDER_B,)),
            (ALL_LABS, "127.0.0.1", "all"),
            (ELSEWHERE, "192.0.2.1", (FOLDER_A,)),  # TEST-NET-1: never this machine
        ):
            document.desktops.append(
                keys.DesktopEntry(ae_title=title, host=host, port=port, labs=labs)
            )


@dataclass
class QueryArchive:
    """`dcmdb receiver` over the filed studies."""

    dcmdb: Dcmdb
    studies: dict[str, FiledStudy]
    url: str

    @property
    def port(self) -> int:
        return self.dcmdb.port

    def uid(self, name: str) -> str:
        return self.studies[name].uid


@contextmanager
def query_archive(root: Path, url: str, broker_url: str, testdata: Path) -> Iterator[QueryArchive]:
    dcmdb = Dcmdb(root / "data", broker_url, url)
    studies = file_studies(dcmdb.data_dir, url, testdata)
    write_desktops(dcmdb.data_dir / "keys.yaml", free_port())
    dcmdb.start("receiver")
    try:
        dcmdb.wait_until_listening()
        yield QueryArchive(dcmdb, studies, url)
    finally:
        dcmdb.stop()


@dataclass(frozen=True)
class Response:
    status: int
    comment: str
    identifier: Dataset | None


def pynetdicom_find(
    port: int,
    identifier: Dataset,
    *,
    model: str = str(StudyRootQueryRetrieveInformationModelFind),
    calling_ae: str = DESK_A,
    cancel_after: int | None = None,
    extended: bytes | None = None,
) -> list[Response]:
    """Every response to a C-FIND sent by pynetdicom, as a script would; with
    `cancel_after`, a C-CANCEL once that many matches arrived; with `extended`, that
    SOP Class Extended Negotiation of the model (what dcmdb accepts in `accepted`)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(model)
    negotiation = []
    if extended is not None:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid, item.service_class_application_information = model, extended
        negotiation.append(item)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE, ext_neg=negotiation)
    assert assoc.is_established, "association refused"
    tuned_requestor(assoc)
    responses: list[Response] = []
    try:
        message_id = 1
        for status, found in assoc.send_c_find(identifier, model, msg_id=message_id):
            assert status is not None and "Status" in status, "no response (timed out?)"
            comment = str(status.get("ErrorComment", "") or "")
            responses.append(Response(int(status.Status), comment, found))
            if cancel_after is not None and len(responses) == cancel_after:
                context = assoc._get_valid_context(model, "", "scu")
                assoc.send_c_cancel(message_id, context.context_id)
    finally:
        assoc.release()
    return responses


def findscu(
    port: int,
    keys_: list[str],
    out: Path,
    *,
    model: str = "-S",
    calling_ae: str = DESK_A,
    extra: tuple[str, ...] = (),
) -> tuple[list[Dataset], subprocess.CompletedProcess[str]]:
    """DCMTK's findscu with `-k` keys; its responses (written by -X) in the order received."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    command = [require_tool("findscu"), "-v", model, "-aet", calling_ae, "-aec", AE_TITLE,
               "-X", "-od", str(out), *extra]  # fmt: skip
    for key in keys_:
        command += ["-k", key]
    result = subprocess.run(
        [*command, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=out,
    )
    responses = [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    return responses, result

"""Arrivals for the sorter: real DICOM files put into ``incoming/`` the way the receiver does.

The receiver names each file ``<20-digit time_ns stamp>-<random>.dcm`` and announces it with
an InstanceReceived whose ``received_at`` is read back from that stamp; so do these helpers.
Stamps are handed out in increasing order, so a later arrival is a newer reception.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.sorter.filing import Filer
from shared.catalog.models import Instance
from shared.errors import UnreadableObject
from shared.headers import Header, Identifiers
from shared.incoming import received_time
from shared.messages import InstanceReceived

_clock = itertools.count(time.time_ns() // 10**6 * 10**6, 10**6)  # a millisecond apart


def next_stamp() -> int:
    """A reception time (ns) later than every one handed out before."""
    return next(_clock)


def has_file_meta(path: Path) -> bool:
    """True for a DICOM Part 10 file: what the receiver writes into ``incoming/``."""
    try:
        meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    except Exception:
        return False
    return "TransferSyntaxUID" in meta


def dicom_files(testdata: Path, *folders: str) -> list[Path]:
    """Part 10 files under ``<testdata>/<folder>/dicom``, all folders when none is named."""
    roots = [testdata / f / "dicom" for f in folders] or sorted(testdata.glob("*/dicom"))
    files = sorted(p for root in roots for p in root.rglob("*") if p.is_file())
    return [p for p in files if has_file_meta(p)]


def with_new_uids(
    source: Path, *, study: str = "", series: str = "", keep_sop: bool = False, **tags: object
) -> bytes:
    """``source`` as another instance (a new SOP Instance UID), or a copy in another series."""
    dataset = dcmread(source)
    if not keep_sop:
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = study or dataset.StudyInstanceUID
    dataset.SeriesInstanceUID = series or dataset.SeriesInstanceUID
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def arrive(
    content: bytes | Path,
    data_dir: Path,
    *,
    stamp: int | None = None,
    calling_ae: str = "TESTSCU",
    event_path: Path | None = None,
) -> InstanceReceived:
    """Write ``content`` into ``data_dir/incoming`` as a newly received file; its event.

    ``stamp`` (ns) fixes the reception time, so that several copies can share one;
    ``event_path`` is the file the event's UIDs are read from when ``content`` is no DICOM.
    """
    data = content.read_bytes() if isinstance(content, Path) else content
    stamp = next_stamp() if stamp is None else stamp
    incoming = data_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"{stamp:020d}-{uuid.uuid4().hex[:12]}.dcm"
    path.write_bytes(data)
    header = dcmread(event_path or path, stop_before_pixels=True, force=True)
    return InstanceReceived(
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        transfer_syntax_uid=str(header.file_meta.get("TransferSyntaxUID", "")),
        incoming_path=str(path.relative_to(data_dir)),
        size=len(data),
        received_at=received_time(path.name),
        calling_ae=calling_ae,
        peer_host="127.0.0.1",
        association_id=uuid.uuid4().hex,
    )


def arrive_as_received(data: bytes, data_dir: Path) -> InstanceReceived:
    """`data` in ``incoming/`` with the event the receiver sends for it: its UIDs as the
    receiver reads them, or placeholders when they cannot be read (a file that went bad
    after it was received)."""
    stamp = next_stamp()
    incoming = data_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    path = incoming / f"{stamp:020d}-{uuid.uuid4().hex[:12]}-{len(data)}.dcm"
    path.write_bytes(data)
    try:
        uids = Header.from_part10(data).identifiers()
    except UnreadableObject:
        uids = Identifiers("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", "1.2.3.5", "1.2.3.6")
    return InstanceReceived(
        sop_instance_uid=uids.sop_instance_uid,
        sop_class_uid=uids.sop_class_uid,
        study_instance_uid=uids.study_instance_uid,
        series_instance_uid=uids.series_instance_uid,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        incoming_path=str(path.relative_to(data_dir)),
        size=len(data),
        received_at=received_time(path.name),
        calling_ae="HOSTILE",
        peer_host="127.0.0.1",
        association_id=uuid.uuid4().hex,
    )


@dataclass
class Sorter:
    """A sorter's filing logic on a data directory and catalog of its own (fixture ``sorter``)."""

    data: Path
    archive: Path
    quarantine: Path
    sessions: sessionmaker[Session]
    filer: Filer

    def incoming(self) -> list[str]:
        return sorted(p.name for p in (self.data / "incoming").glob("*"))

    def archived(self) -> dict[str, bytes]:
        files = (p for p in self.archive.rglob("*") if p.is_file())
        return {str(p.relative_to(self.archive)): p.read_bytes() for p in files}

    def instances(self) -> dict[str, Instance]:
        with self.sessions() as session:
            return {i.sop_instance_uid: i for i in session.scalars(select(Instance))}

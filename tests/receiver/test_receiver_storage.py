"""Durable storage in incoming/: the file meta we write, and recovery after a crash."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from shared.disk import DiskUsage, Threshold
from shared.incoming import FileMeta, IncomingStore, SpaceFloor, received_time
from tests.system import dicom_files

META = FileMeta("1.2.840.10008.5.1.4.1.1.4", "1.2.3.44444", "1.2.840.10008.1.2.1", "SCANNER")


def pydicom_encoding(meta: FileMeta) -> bytes:
    reference = FileMetaDataset()
    reference.MediaStorageSOPClassUID = meta.sop_class_uid
    reference.MediaStorageSOPInstanceUID = meta.sop_instance_uid
    reference.TransferSyntaxUID = meta.transfer_syntax_uid
    reference.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    reference.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    reference.SourceApplicationEntityTitle = meta.source_ae
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, reference, enforce_standard=True)
    return buffer.getvalue()


def test_file_meta_is_encoded_as_pydicom_encodes_it() -> None:
    assert META.encode() == pydicom_encoding(META)
    odd = FileMeta("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2", "AE1")
    assert odd.encode() == pydicom_encoding(odd)


def test_a_stored_instance_is_the_data_set_as_received(tmp_path: Path, testdata: Path) -> None:
    source = dicom_files(testdata / "siemens_xa30_t1w_3d_classic")[0]
    original = pydicom.dcmread(source)
    store = IncomingStore(tmp_path / "incoming", tmp_path / "quarantine")
    meta = FileMeta(original.SOPClassUID, original.SOPInstanceUID, "1.2.840.10008.1.2.1", "X")
    body = source.read_bytes()
    group_length = int.from_bytes(body[140:144], "little")
    data_set = body[144 + group_length :]
    stored = store.store(meta, data_set)
    path = tmp_path / "incoming" / stored.name
    assert path.read_bytes().endswith(data_set)
    assert stored.size == path.stat().st_size
    copy = pydicom.dcmread(path)
    assert copy.SOPInstanceUID == original.SOPInstanceUID
    assert copy.file_meta.SourceApplicationEntityTitle == "X"
    assert copy.pixel_array.tolist() == original.pixel_array.tolist()
    assert abs((received_time(stored.name) - stored.received_at).total_seconds()) < 1e-6
    assert all(p.stat().st_size == 0 for p in (tmp_path / "incoming" / ".partial").iterdir())


def tiny_data_set(sop_instance_uid: str) -> bytes:
    """Explicit VR little endian: the four UIDs an instance is filed by, nothing more."""
    elements = [
        (0x0008, 0x0016, "1.2.840.10008.5.1.4.1.1.4"),
        (0x0008, 0x0018, sop_instance_uid),
        (0x0020, 0x000D, "1.2.3.1"),
        (0x0020, 0x000E, "1.2.3.2"),
    ]
    encoded = b""
    for group, element, uid in elements:
        value = uid.encode() + b"\0" * (len(uid) % 2)
        encoded += struct.pack("<HH2sH", group, element, b"UI", len(value)) + value
    return encoded


def test_restart_recovers_complete_partial_files_and_drops_incomplete_ones(
    tmp_path: Path,
) -> None:
    incoming = tmp_path / "incoming"
    store = IncomingStore(incoming, tmp_path / "quarantine")
    first = store.store(META, tiny_data_set("1.2.3.44444"))
    second = store.store(META, tiny_data_set("1.2.3.55555"))
    third = store.store(META, tiny_data_set("1.2.3.66666"))
    # A power cut undid the rename of the first (complete, maybe acknowledged) and
    # caught the second mid-write (incomplete, never acknowledged).
    os.rename(incoming / first.name, incoming / ".partial" / first.name)
    with open(incoming / second.name, "r+b") as handle:
        handle.truncate(second.size - 10)
    os.rename(incoming / second.name, incoming / ".partial" / second.name)

    # And a spare the power cut caught holding a whole object, and an empty one.
    (incoming / ".partial" / "spare-whole").write_bytes((incoming / third.name).read_bytes())
    (incoming / third.name).unlink()
    (incoming / ".partial" / "spare-empty").write_bytes(b"")

    IncomingStore(incoming, tmp_path / "quarantine")

    waiting = IncomingStore.waiting_in(incoming)
    assert incoming / first.name in waiting and len(waiting) == 2
    assert (incoming / ".partial" / "spare-whole").exists() is False
    assert not (incoming / ".partial" / "spare-empty").exists()
    assert not (incoming / ".partial" / second.name).exists()


def test_the_free_space_floor_measures_once_per_interval_and_says_each_change_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    figures = iter([900, 50, 40, 30, 700, 800])
    measured: list[int] = []

    def measure(folder: Path) -> DiskUsage:
        assert folder == tmp_path
        measured.append(next(figures))
        return DiskUsage(total=1000, free=measured[-1])

    caplog.set_level(logging.INFO)
    floor = SpaceFloor(tmp_path, Threshold.parse("10%"), interval=0, measure=measure)
    assert [floor.reached() for _ in range(6)] == [False, True, True, True, False, False]
    refusing = [r for r in caplog.records if "below DCMDB_MIN_FREE" in r.message]
    accepting = [r for r in caplog.records if "accepting instances" in r.message]
    assert len(refusing) == 1 and len(accepting) == 1
    assert refusing[0].levelno == logging.ERROR and "50 bytes free" in refusing[0].message

    cached = SpaceFloor(tmp_path, Threshold.parse("10%"), interval=3600, measure=measure)
    measured.clear()
    figures = iter([10, 999])
    assert [cached.reached() for _ in range(1000)] == [True] * 1000
    assert measured == [10], "measured once for the whole interval"

    never = SpaceFloor(tmp_path, Threshold.parse("0"), interval=0, measure=measure)
    assert not never.reached() and measured == [10], "a floor of 0 measures nothing"

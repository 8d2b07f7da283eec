"""The receiver against real peers and bad input: every outcome gets its DICOM answer."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filewriter import write_file_meta_info

from shared.disk import disk_usage
from tests.support import free_port, wait_for
from tests.system import (
    Dcmdb,
    dicom_files,
    echo,
    receiver_alone,
    send_dicom,
    send_raw,
    small_filesystem,
)

pytestmark = pytest.mark.integration

T1_SERIES = "siemens_xa30_t1w_3d_classic"


@pytest.fixture
def receiver(tmp_path: Path, broker_url: str) -> Iterator[Dcmdb]:
    with receiver_alone(tmp_path, broker_url) as system:
        yield system


def transfer_syntaxes(paths: list[Path]) -> set[str]:
    return {str(pydicom.filereader.read_file_meta_info(p).TransferSyntaxUID) for p in paths}


def incoming_files(system: Dcmdb) -> list[Path]:
    return sorted((system.data_dir / "incoming").glob("*.dcm"))


def partial_files(system: Dcmdb) -> list[Path]:
    """Partly written files (the empty spares kept ready for writing do not count)."""
    partial = system.data_dir / "incoming" / ".partial"
    return [path for path in partial.iterdir() if path.stat().st_size > 0]


def with_data_set(source: Path, target: Path, data_set: bytes) -> Path:
    """A Part 10 file with ``source``'s file meta information and the given data set bytes."""
    meta = pydicom.filereader.read_file_meta_info(source)
    buffer = BytesIO()
    write_file_meta_info(buffer, meta)
    target.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + data_set)
    return target


def data_set_bytes(source: Path) -> bytes:
    raw = source.read_bytes()
    meta_end = 132 + len(_encoded_meta(source))
    return raw[meta_end:]


def _encoded_meta(source: Path) -> bytes:
    with open(source, "rb") as handle:
        handle.seek(132)
        ds = pydicom.filereader.read_file_meta_info(source)
        buffer = BytesIO()
        write_file_meta_info(buffer, ds)
        assert handle.read(len(buffer.getvalue())) == buffer.getvalue()
        return buffer.getvalue()


def test_stores_the_bytes_as_received(receiver: Dcmdb, testdata: Path) -> None:
    sources = dicom_files(testdata / "siemens_transfer_syntaxes")  # 9 transfer syntaxes
    send_dicom(receiver.port, sources)
    stored = incoming_files(receiver)
    assert len(stored) == len(sources)
    received = {data_set_bytes(path) for path in stored}
    assert received == {data_set_bytes(path) for path in sources}
    assert transfer_syntaxes(stored) == transfer_syntaxes(sources)
    assert len(transfer_syntaxes(stored)) >= 7
    assert not partial_files(receiver)


def test_garbage_is_refused_with_cannot_understand_and_quarantined(
    receiver: Dcmdb, testdata: Path, tmp_path: Path
) -> None:
    source = dicom_files(testdata / T1_SERIES)[0]
    garbage = with_data_set(source, tmp_path / "garbage.dcm", b"this is not a DICOM data set\n" * 7)
    assert send_raw(receiver.port, garbage) == 0xC210
    assert not incoming_files(receiver)
    quarantined = list((receiver.data_dir / "quarantine").glob("*.dcm"))
    assert len(quarantined) == 1
    note = json.loads(quarantined[0].with_suffix(".json").read_text())
    assert "parse" in note["reason"] or "ends" in note["reason"]
    assert note["calling_ae"] == "RAWSCU"


def test_a_truncated_object_is_refused(receiver: Dcmdb, testdata: Path, tmp_path: Path) -> None:
    source = dicom_files(testdata / T1_SERIES)[0]
    whole = data_set_bytes(source)
    truncated = with_data_set(source, tmp_path / "cut.dcm", whole[: len(whole) // 2])
    assert send_raw(receiver.port, truncated) == 0xC210
    assert not incoming_files(receiver)
    assert len(list((receiver.data_dir / "quarantine").glob("*.dcm"))) == 1
    # The same object whole is accepted on the same receiver afterwards.
    assert send_raw(receiver.port, source) == 0x0000
    assert len(incoming_files(receiver)) == 1


def test_an_object_without_its_study_uid_is_refused(
    receiver: Dcmdb, testdata: Path, tmp_path: Path
) -> None:
    source = dicom_files(testdata / T1_SERIES)[0]
    dataset = pydicom.dcmread(source)
    del dataset.StudyInstanceUID
    target = tmp_path / "no-study.dcm"
    dataset.save_as(target)
    assert send_raw(receiver.port, target) == 0xC211
    assert not incoming_files(receiver)


def test_unknown_calling_ae_and_host_are_rejected(tmp_path: Path, broker_url: str) -> None:
    system = Dcmdb(
        tmp_path / "data",
        broker_url,
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        extra_env={"DCMDB_ALLOWED_CALLING_AES": "SCANNER1, PACS"},
    )
    system.start("receiver")
    try:
        wait_for(lambda: echo(system.port, calling_ae="PACS"), 30, "the receiver")
        assert not echo(system.port, calling_ae="INTRUDER")
        assert echo(system.port, calling_ae="SCANNER1")
    finally:
        system.stop()
    hosts = Dcmdb(
        tmp_path / "data2",
        broker_url,
        f"sqlite:///{tmp_path / 'c2.sqlite'}",
        extra_env={"DCMDB_ALLOWED_HOSTS": "192.0.2.10"},
    )
    hosts.start("receiver")
    try:
        wait_for(lambda: "listening" in hosts.log(), 30, "the receiver to start")
        assert not echo(hosts.port)  # loopback is not on the list
        assert "rejecting association" in hosts.log()
    finally:
        hosts.stop()


@pytest.fixture
def tiny_incoming(tmp_path: Path) -> Iterator[Path]:
    """``incoming/`` on a 512 KiB filesystem of its own, so that it really fills up."""
    with small_filesystem(tmp_path / "data" / "incoming", "512k") as incoming:
        yield incoming


def test_a_full_disk_gets_out_of_resources_and_leaves_no_partial_file(
    tiny_incoming: Path, tmp_path: Path, broker_url: str, testdata: Path
) -> None:
    system = Dcmdb(
        tmp_path / "data",
        broker_url,
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        extra_env={"DCMDB_MIN_FREE": "0"},  # no floor: the disk itself fills up
    )
    system.start("receiver")
    try:
        system.wait_until_listening()
        sources = dicom_files(testdata / T1_SERIES)[:8]  # about 180 KB each
        statuses = [send_raw(system.port, path) for path in sources]
        assert statuses[0] == 0x0000
        assert 0xA700 in statuses, statuses
        stored = incoming_files(system)
        assert len(stored) == statuses.count(0x0000)
        assert not partial_files(system)
        # What was acknowledged is whole.
        sent = {data_set_bytes(p) for p, s in zip(sources, statuses, strict=True) if s == 0}
        assert {data_set_bytes(p) for p in stored} == sent
        # Space back: the receiver accepts again.
        for path in stored:
            shutil.move(path, tmp_path / path.name)
        assert send_raw(system.port, sources[-1]) == 0x0000
    finally:
        system.stop()


def test_a_second_receiver_on_the_same_incoming_folder_refuses_to_start(receiver: Dcmdb) -> None:
    """Receivers sharing a data directory (several hosts behind a load balancer) each
    need a folder of their own: the second on the same one stops at start and says why."""
    free_port_env = {"DCMDB_DICOM_PORT": str(free_port())}
    second = receiver.start("receiver", name="second", env=free_port_env)
    assert second.wait(60) == 2
    assert "DCMDB_INCOMING_FOLDER" in receiver.log("second")
    assert echo(receiver.port)  # the first one is unharmed
    third = receiver.start(
        "receiver", name="third", env={**free_port_env, "DCMDB_INCOMING_FOLDER": "incoming-b"}
    )
    wait_for(lambda: "listening" in receiver.log("third"), 60, "the third receiver")
    assert third.poll() is None
    assert (receiver.data_dir / "incoming-b" / ".partial").is_dir()


def test_below_the_free_space_floor_it_refuses_before_the_disk_fills(
    tmp_path: Path, broker_url: str, testdata: Path
) -> None:
    system = Dcmdb(
        tmp_path / "data",
        broker_url,
        f"sqlite:///{tmp_path / 'c.sqlite'}",
        extra_env={"DCMDB_MIN_FREE": "1MiB"},
    )
    sources = dicom_files(testdata / T1_SERIES)[:20]  # about 180 KB each
    with small_filesystem(system.data_dir / "incoming", "2m") as incoming:
        system.start("receiver")
        try:
            system.wait_until_listening()
            statuses = []
            for path in sources:
                statuses.append(send_raw(system.port, path))
                if statuses[-1] != 0x0000:
                    break
                time.sleep(1.1)  # the receiver measures free space at most once a second
            assert statuses[-1] == 0xA700 and statuses.count(0x0000) >= 3, statuses
            free = disk_usage(incoming).free
            assert free >= 512 * 1024, "refused at the floor, with room left on the disk"
            assert [send_raw(system.port, p) for p in sources[-2:]] == [0xA700, 0xA700]
            assert len(incoming_files(system)) == statuses.count(0x0000)
            assert not partial_files(system)
            assert system.log().count("below DCMDB_MIN_FREE") == 1
            assert "cannot store instance" not in system.log()
            # Space back: accepted again.
            for path in incoming_files(system):
                path.unlink()
            wait_for(lambda: send_raw(system.port, sources[-1]) == 0x0000, 30, "acceptance")
            assert system.log().count("accepting instances") == 1
        finally:
            system.stop()

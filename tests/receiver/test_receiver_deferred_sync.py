"""Which C-STOREs are answered before their sync: those of retrievals dcmdb asked for itself.

A C-STORE naming dcmdb (its AE title or an alias) as the move originator, with a message ID,
is written, answered and noted in ``<data>/.unsynced/`` for its job's sync; every other one
(a scanner, a PACS pushing on its own, another node's move) is synced and never noted.
The real receiver, sent to with pynetdicom as a PACS sends its sub-operations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from shared.unsynced import FOLDER, UnsyncedFiles
from tests.system import AE_TITLE, Dcmdb, dicom_files, receiver_alone, send_dicom

ALIAS = "DCMDB-OLD"


@pytest.fixture
def receiver(tmp_path: Path, broker_url: str) -> Iterator[Dcmdb]:
    with receiver_alone(tmp_path, broker_url, {"DCMDB_AE_ALIASES": ALIAS}) as system:
        yield system


def _send(port: int, path: Path, originator: str | None, message_id: int | None) -> int:
    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset, originator_aet=originator, originator_id=message_id)
    finally:
        assoc.release()
    return int(status.Status)


def _incoming(system: Dcmdb) -> dict[str, Path]:
    return {p.name: p for p in (system.data_dir / "incoming").glob("*.dcm")}


def test_only_dcmdbs_own_retrievals_are_answered_before_their_sync(
    receiver: Dcmdb, testdata: Path
) -> None:
    own, alias, other, no_id, scanner = dicom_files(testdata / "ge_fmri_epi_4d")[:5]
    unsynced = UnsyncedFiles(receiver.data_dir)
    assert _send(receiver.port, own, AE_TITLE, 7) == 0
    assert _send(receiver.port, alias, ALIAS, 8) == 0
    noted = unsynced.marked()
    assert len(noted) == 2
    for marker in noted:  # a second name of the file in incoming/, not a copy
        assert os.stat(marker).st_ino == os.stat(_incoming(receiver)[marker.name]).st_ino
    assert _send(receiver.port, other, "ELSEWHERE", 9) == 0  # another node's move
    assert _send(receiver.port, no_id, AE_TITLE, None) == 0  # no message ID: not a move's
    send_dicom(receiver.port, [scanner])  # storescu: no move originator at all
    assert unsynced.marked() == noted
    assert len(_incoming(receiver)) == 5


def test_the_sync_forgets_what_it_made_durable(tmp_path: Path, testdata: Path) -> None:
    source = dicom_files(testdata / "ge_fmri_epi_4d")[0]
    unsynced = UnsyncedFiles(tmp_path)
    for name in ("a.dcm", "b.dcm"):
        (tmp_path / name).write_bytes(source.read_bytes())
        unsynced.mark(str(tmp_path / name), name)
    assert [p.name for p in unsynced.marked()] == ["a.dcm", "b.dcm"]
    assert unsynced.make_durable(tmp_path) == 2
    assert unsynced.marked() == []
    assert (tmp_path / FOLDER).is_dir() and (tmp_path / "a.dcm").exists()

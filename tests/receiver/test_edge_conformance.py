"""The receiver's edge, as a peer's operator meets it: a refused association says why on
the wire (A-ASSOCIATE-RJ with its reason), a refused instance says why in its Error
Comment, and the log names the peer's address and AE title."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from shared import keys
from tests.conftest import require_tool
from tests.support import wait_for
from tests.system import AE_TITLE, Dcmdb, dcmtk_env, dicom_files, send_raw_answer

pytestmark = pytest.mark.integration


def _receiver(root: Path, broker_url: str, **env: str) -> Dcmdb:
    system = Dcmdb(root / "data", broker_url, f"sqlite:///{root / 'c.sqlite'}", extra_env=env)
    system.start("receiver")
    wait_for(lambda: "listening on" in system.log(), 60, "the receiver to listen")
    return system


@pytest.fixture
def guarded(tmp_path: Path, broker_url: str) -> Iterator[Dcmdb]:
    """A receiver that knows two calling AE titles and answers to an old AE title too."""
    system = _receiver(
        tmp_path,
        broker_url,
        DCMDB_ALLOWED_CALLING_AES="SCANNER1,PACS",
        DCMDB_AE_ALIASES="OLD_DCMDB",
    )
    try:
        yield system
    finally:
        system.stop()


def echoscu(port: int, *, calling: str, called: str = AE_TITLE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def rejection(port: int, *, calling: str, called: str = AE_TITLE) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the receiver answers."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_rejected, "the association was not rejected"
    answer = assoc.acceptor.primitive
    return answer.result, answer.result_source, answer.diagnostic


def test_an_unknown_calling_ae_title_is_told_so(guarded: Dcmdb) -> None:
    refused = echoscu(guarded.port, calling="WRONG")
    assert refused.returncode != 0
    assert "Rejected Permanent" in refused.stderr, refused.stderr
    assert "Calling AE Title Not Recognized" in refused.stderr
    assert rejection(guarded.port, calling="WRONG") == (1, 1, 3)
    assert "rejecting association from WRONG at 127.0.0.1" in guarded.log()
    assert echoscu(guarded.port, calling="SCANNER1").returncode == 0


def test_a_called_ae_title_not_dcmdbs_is_told_so(guarded: Dcmdb) -> None:
    refused = echoscu(guarded.port, calling="PACS", called="ORTHANC")
    assert "Called AE Title Not Recognized" in refused.stderr, refused.stderr
    assert rejection(guarded.port, calling="PACS", called="ORTHANC") == (1, 1, 7)
    assert "to ORTHANC" in guarded.log()
    assert echoscu(guarded.port, calling="PACS", called="OLD_DCMDB").returncode == 0


def test_a_host_outside_the_list_is_rejected_permanently_with_no_reason(
    tmp_path: Path, broker_url: str
) -> None:
    system = _receiver(tmp_path, broker_url, DCMDB_ALLOWED_HOSTS="192.0.2.10")
    try:
        refused = echoscu(system.port, calling="PACS")
        assert "Rejected Permanent" in refused.stderr, refused.stderr
        assert "Reason: No Reason" in refused.stderr
        assert rejection(system.port, calling="PACS") == (1, 1, 1)
        assert "rejecting association from PACS at 127.0.0.1" in system.log()
    finally:
        system.stop()


def test_a_labs_desktop_is_let_in_by_its_title_and_host_alone(guarded: Dcmdb) -> None:
    assert echoscu(guarded.port, calling="SMITH_HOROS").returncode != 0
    with keys.editing(guarded.data_dir / "keys.yaml") as document:
        document.desktops += [
            keys.DesktopEntry(ae_title="SMITH_HOROS", host="127.0.0.1", port=11112, labs="all"),
            keys.DesktopEntry(ae_title="FAR_HOROS", host="192.0.2.10", port=11112, labs="all"),
        ]
    # Taken without a restart; a desktop's title from another host is not that desktop.
    assert echoscu(guarded.port, calling="SMITH_HOROS").returncode == 0
    assert rejection(guarded.port, calling="FAR_HOROS") == (1, 1, 3)


def test_a_refused_instance_says_why(guarded: Dcmdb, testdata: Path, tmp_path: Path) -> None:
    source = dicom_files(testdata / "siemens_xa30_t1w_3d_classic")[0]
    dataset = pydicom.dcmread(source)
    del dataset.SOPInstanceUID
    target = tmp_path / "no-sop-uid.dcm"
    dataset.save_as(target)
    answer = send_raw_answer(guarded.port, target, calling_ae="PACS")
    assert answer.Status == 0xC211
    assert "SOP Instance UID" in answer.ErrorComment or "SOPInstanceUID" in answer.ErrorComment
    assert "from PACS at 127.0.0.1" in guarded.log()

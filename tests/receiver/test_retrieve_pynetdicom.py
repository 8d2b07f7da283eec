"""pynetdicom as a desktop: C-MOVE and C-GET of what its labs hold, the statuses of every
outcome with their Error Comments, C-CANCEL in the middle, and the audit trail."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from shared import keys
from shared.headers import STORED_TRANSFER_SYNTAXES
from tests.receiver.retrieve_archive import (
    ABORT,
    DESK_A,
    DESK_B,
    FOLDER_A,
    FOLDER_B,
    PATIENT_GET,
    PATIENT_MOVE,
    Destination,
    RetrieveArchive,
    digests,
    final,
    identifier,
    retrieve_archive,
    scu_get,
    scu_move,
)
from tests.support import refused_port, wait_for
from tests.system import echo, receiver_alone

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]
UNCOMPRESSED = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> Iterator[RetrieveArchive]:
    with retrieve_archive(tmp_path_factory.mktemp("retrieve-pynetdicom"), testdata) as filed:
        yield filed


@pytest.fixture
def desk_a(archive: RetrieveArchive) -> Iterator[Destination]:
    """Lab A's desktop, storing whatever it is sent."""
    with Destination(DESK_A, STORED_TRANSFER_SYNTAXES).running() as destination:
        archive.desktop(DESK_A, destination.port, [FOLDER_A])
        yield destination


@pytest.fixture
def desk_b(archive: RetrieveArchive) -> Iterator[Destination]:
    with Destination(DESK_B, STORED_TRANSFER_SYNTAXES).running() as destination:
        archive.desktop(DESK_B, destination.port, [FOLDER_B])
        yield destination


def study_query(archive: RetrieveArchive, name: str) -> object:
    return identifier("STUDY", StudyInstanceUID=archive.uid(name))


def sop_classes(archive: RetrieveArchive, name: str) -> set[str]:
    files = archive.files(name).values()
    return {str(read_file_meta_info(path).MediaStorageSOPClassUID) for path in files}


def counts(status: object) -> tuple[int, int, int]:
    return tuple(  # type: ignore[return-value]
        status.get(f"NumberOf{kind}Suboperations")  # type: ignore[attr-defined]
        for kind in ("Completed", "Failed", "Warning")
    )


def test_move_sends_each_instance_as_archived_with_pending_counts(
    archive: RetrieveArchive, desk_a: Destination
) -> None:
    responses = scu_move(archive.port, DESK_A, DESK_A, study_query(archive, "syntaxes"))

    assert final(responses).Status == 0x0000
    assert counts(final(responses)) == (9, 0, 0)
    pending = [status for status, _ in responses[:-1]]
    assert [s.Status for s in pending] == [0xFF00] * 9
    assert [s.NumberOfRemainingSuboperations for s in pending] == list(range(8, -1, -1))
    assert [s.NumberOfCompletedSuboperations for s in pending] == list(range(1, 10))
    assert digests(desk_a.stored) == archive.archived("syntaxes")
    assert len(desk_a.transfer_syntaxes) >= 7  # each in its stored transfer syntax
    assert desk_a.originators == {(DESK_A, 7)}  # the C-MOVE's requestor and message ID


def test_get_sends_each_instance_back_as_archived(archive: RetrieveArchive) -> None:
    archive.desktop(DESK_A, 104, [FOLDER_A])
    got = scu_get(
        archive.port, DESK_A, study_query(archive, "syntaxes"), sop_classes(archive, "syntaxes")
    )

    assert final(got.responses).Status == 0x0000
    assert counts(final(got.responses)) == (9, 0, 0)
    assert digests(got.data_sets) == archive.archived("syntaxes")
    assert len(got.transfer_syntaxes) >= 7


def test_cancel_in_the_middle_of_a_move_reports_the_counts(
    archive: RetrieveArchive,
) -> None:
    cancel_sent = threading.Event()

    def third_waits_for_the_cancel(number: int) -> int:
        if number == 3:
            cancel_sent.wait(30)
        return 0x0000

    with Destination(
        DESK_A, STORED_TRANSFER_SYNTAXES, third_waits_for_the_cancel
    ).running() as desk:
        archive.desktop(DESK_A, desk.port, [FOLDER_A])
        responses = scu_move(
            archive.port, DESK_A, DESK_A, study_query(archive, "mr"),
            cancel_after=2, cancelled=cancel_sent.set,
        )  # fmt: skip

    status = final(responses)
    assert status.Status == 0xFE00
    completed, failed, warning = counts(status)
    remaining = status.NumberOfRemainingSuboperations
    assert remaining > 0 and completed >= 3
    assert completed + failed + warning + remaining == 96
    assert len(desk.stored) == completed
    assert status.ErrorComment


def test_lab_b_desktop_retrieves_none_of_lab_a_studies(
    archive: RetrieveArchive, desk_b: Destination
) -> None:
    moved = scu_move(archive.port, DESK_B, DESK_B, study_query(archive, "mr"))
    got = scu_get(archive.port, DESK_B, study_query(archive, "mr"), sop_classes(archive, "mr"))

    for responses in (moved, got.responses):
        assert final(responses).Status == 0x0000
        assert counts(final(responses)) == (0, 0, 0)
    assert not desk_b.stored and not got.data_sets
    # Its own lab's study it gets.
    own = scu_get(archive.port, DESK_B, study_query(archive, "b"), sop_classes(archive, "b"))
    assert digests(own.data_sets) == archive.archived("b")


def test_a_study_cannot_go_to_a_desktop_of_another_lab(
    archive: RetrieveArchive, desk_a: Destination, desk_b: Destination
) -> None:
    responses = scu_move(archive.port, DESK_A, DESK_B, study_query(archive, "mr"))

    assert final(responses).Status == 0x0124
    assert DESK_B in final(responses).ErrorComment
    assert not desk_b.stored


def test_an_unknown_destination_is_refused_with_a_comment(
    archive: RetrieveArchive, desk_a: Destination
) -> None:
    status = final(scu_move(archive.port, DESK_A, "NOBODY", study_query(archive, "mr")))
    assert status.Status == 0xA801
    assert "NOBODY" in status.ErrorComment


def test_a_destination_that_cannot_be_reached_fails_naming_it(archive: RetrieveArchive) -> None:
    with refused_port() as port:
        archive.desktop(DESK_A, port, [FOLDER_A])
        status = final(scu_move(archive.port, DESK_A, DESK_A, study_query(archive, "syntaxes")))
    assert status.Status == 0xC000
    assert f"127.0.0.1:{port}" in status.ErrorComment
    assert counts(status) == (0, 9, 0)


def test_a_caller_that_is_no_desktop_is_refused(archive: RetrieveArchive) -> None:
    status = final(scu_move(archive.port, "STRANGER", DESK_A, study_query(archive, "mr")))
    assert status.Status == 0x0124
    assert "STRANGER" in status.ErrorComment


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # what is sent, on purpose
@pytest.mark.parametrize(
    ("query", "said"),
    [
        (identifier("STUDY"), "StudyInstanceUID"),
        (identifier("PATIENT", PatientID="PA001"), "QueryRetrieveLevel"),
        (identifier("SERIES", SeriesInstanceUID="not.a.uid"), "not a UID"),
        (identifier("WARD", StudyInstanceUID="1.2.3"), "QueryRetrieveLevel"),
    ],
)
def test_an_identifier_that_does_not_fit_is_refused(
    archive: RetrieveArchive, desk_a: Destination, query: object, said: str
) -> None:
    status = final(scu_move(archive.port, DESK_A, DESK_A, query))  # type: ignore[arg-type]
    assert status.Status == 0xA900
    assert said in status.ErrorComment
    assert not desk_a.stored


def test_a_study_being_evicted_is_not_found(archive: RetrieveArchive, desk_a: Destination) -> None:
    status = final(scu_move(archive.port, DESK_A, DESK_A, study_query(archive, "gone")))
    assert status.Status == 0x0000 and counts(status) == (0, 0, 0)


def test_patient_root_moves_a_patients_studies_within_the_labs(
    archive: RetrieveArchive, desk_a: Destination
) -> None:
    # PA001 has lab A's "mr" and the evicting "gone": only "mr" goes.
    query = identifier("PATIENT", PatientID="PA001")
    status = final(scu_move(archive.port, DESK_A, DESK_A, query, model=PATIENT_MOVE))
    assert status.Status == 0x0000
    assert digests(desk_a.stored) == archive.archived("mr")


def test_image_level_gets_the_instances_listed(archive: RetrieveArchive) -> None:
    archive.desktop(DESK_A, 104, [FOLDER_A])
    study = archive.studies["mr"]
    series, instances = next(iter(study.series.items()))
    wanted = instances[10:13]
    query = identifier(
        "IMAGE", PatientID="PA001", StudyInstanceUID=study.uid, SeriesInstanceUID=series,
        SOPInstanceUID=wanted,
    )  # fmt: skip
    got = scu_get(archive.port, DESK_A, query, sop_classes(archive, "mr"), model=PATIENT_GET)
    assert final(got.responses).Status == 0x0000
    assert set(got.data_sets) == set(wanted)


def test_failed_sub_operations_are_listed_with_the_reason(archive: RetrieveArchive) -> None:
    def odd_ones_fail(number: int) -> int:
        return 0xA700 if number % 2 else 0x0000

    with Destination(DESK_A, STORED_TRANSFER_SYNTAXES, odd_ones_fail).running() as desk:
        archive.desktop(DESK_A, desk.port, [FOLDER_A])
        responses = scu_move(archive.port, DESK_A, DESK_A, study_query(archive, "syntaxes"))
    status, failed_list = responses[-1]
    assert status.Status == 0xB000
    assert counts(status) == (4, 5, 0)
    assert "5 of 9 failed" in status.ErrorComment
    assert failed_list is not None
    sent = set(archive.studies["syntaxes"].instances)
    assert set(failed_list.FailedSOPInstanceUIDList) == sent - set(desk.stored)

    with Destination(DESK_A, STORED_TRANSFER_SYNTAXES, lambda number: 0xA700).running() as desk:
        archive.desktop(DESK_A, desk.port, [FOLDER_A])
        status = final(scu_move(archive.port, DESK_A, DESK_A, study_query(archive, "syntaxes")))
    assert status.Status == 0xA702
    assert counts(status) == (0, 9, 0)
    assert status.ErrorComment


def test_a_destination_that_aborts_in_the_middle_fails_what_is_left(
    archive: RetrieveArchive,
) -> None:
    def abort_the_third(number: int) -> int:
        return ABORT if number == 3 else 0x0000

    with Destination(DESK_A, STORED_TRANSFER_SYNTAXES, abort_the_third).running() as desk:
        archive.desktop(DESK_A, desk.port, [FOLDER_A])
        responses = scu_move(archive.port, DESK_A, DESK_A, study_query(archive, "mr"))
    status, failed_list = responses[-1]
    assert status.Status == 0xB000
    assert counts(status) == (2, 94, 0)
    assert "94 of 96 failed" in status.ErrorComment and "abort" in status.ErrorComment
    assert failed_list is not None and len(failed_list.FailedSOPInstanceUIDList) == 94
    assert len(desk.stored) == 2


def test_a_destination_without_the_stored_syntax_gets_it_re_encoded_or_not_at_all(
    archive: RetrieveArchive,
) -> None:
    """Uncompressed instances go in Implicit VR Little Endian to a destination that takes
    nothing else, the same data set; compressed ones cannot, and fail saying why."""
    with Destination(DESK_A, [ImplicitVRLittleEndian]).running() as desk:
        archive.desktop(DESK_A, desk.port, [FOLDER_A])
        status = final(scu_move(archive.port, DESK_A, DESK_A, study_query(archive, "syntaxes")))
    files = archive.files("syntaxes")
    uncompressed = {
        uid
        for uid, path in files.items()
        if read_file_meta_info(path).TransferSyntaxUID in UNCOMPRESSED
    }
    assert set(desk.stored) == uncompressed and len(uncompressed) == 3
    assert desk.transfer_syntaxes == {ImplicitVRLittleEndian}
    for uid, data in desk.stored.items():
        archived = dcmread(files[uid])
        assert archived.PixelData == dcmread_implicit(data).PixelData
    assert status.Status == 0xB000
    assert "transfer syntax" in status.ErrorComment


def dcmread_implicit(data: bytes) -> object:
    from io import BytesIO

    from pynetdicom.dsutils import decode

    return decode(BytesIO(data), True, True, False)


def test_each_retrieve_is_in_the_audit_trail(archive: RetrieveArchive) -> None:
    desk = "DESK_AUDITED"  # a desktop of lab A of its own: its records are this test's
    with Destination(desk, STORED_TRANSFER_SYNTAXES).running() as destination:
        archive.desktop(desk, destination.port, [FOLDER_A])
        scu_move(archive.port, desk, desk, study_query(archive, "syntaxes"))
        scu_get(archive.port, desk, study_query(archive, "b"), sop_classes(archive, "b"))

    def records() -> list[Any]:
        return [event for event in archive.audit() if event.key_name == f"desktop:{desk}"]

    move, get = wait_for(lambda: len(found := records()) == 2 and found, 30, "two audit records")
    sizes = sum(path.stat().st_size for path in archive.files("syntaxes").values())
    assert (move.action, move.study_uid) == ("dicom.move", archive.uid("syntaxes"))
    assert (move.instances, move.bytes_sent, move.destination) == (9, sizes, desk)
    assert (move.status, move.client) == (0x0000, "127.0.0.1")
    # Lab B's study is not lab A's desktop's: nothing found, nothing sent, and recorded so.
    assert (get.action, get.study_uid, get.instances) == ("dicom.get", None, 0)
    assert (get.bytes_sent, get.destination, get.status) == (0, None, 0x0000)


def test_a_catalog_that_cannot_be_read_fails_the_retrieve_not_the_receiver(
    tmp_path: Path, broker_url: str
) -> None:
    """A receiver started before any catalog exists (nothing migrated it yet) keeps
    receiving, and answers a retrieve with the reason."""
    with keys.editing(tmp_path / "data" / "keys.yaml") as document:
        document.desktops.append(
            keys.DesktopEntry(ae_title=DESK_A, host="127.0.0.1", port=104, labs="all")
        )
    with receiver_alone(tmp_path, broker_url) as receiver:
        status = final(
            scu_move(receiver.port, DESK_A, DESK_A, identifier("STUDY", StudyInstanceUID="1.2.3"))
        )
        assert echo(receiver.port)
    assert status.Status == 0xC000
    assert "catalog" in status.ErrorComment

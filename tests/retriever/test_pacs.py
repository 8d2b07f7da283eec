"""The PACS client against real PACS: dcmqrscp and Orthanc, filled with the test data.

What each query should find is worked out from the files' own headers; what a
retrieval moved is what DCMTK's storescp (standing in for dcmdb's receiver) wrote.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from shared.errors import PacsError
from shared.pacs import tuned_requestor
from shared.pacs_find import (
    StudyQuery,
    count_instances,
    counted_series,
    find_series,
    find_studies,
)
from shared.pacs_retrieve import MoveAssociations, Progress, retrieve
from shared.peers import Peer, load_peers_file, parse_peers
from tests.pacs_peers import Dcmqrscp, Orthanc, StoreScp
from tests.support import free_port
from tests.system import AE_TITLE, dicom_files

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup("pacs")]

# What the PACS holds: 308 instances in 7 studies, no SOP instance twice.
PACS_FOLDERS = [
    "siemens_xa30_t1w_3d_classic",  # with the next: one study, two series, 101 instances
    "siemens_xa30_localizer_2001",
    "ge_fmri_epi_4d",  # with the next: one study, 71 instances
    "ge_3plane_localizer",
    "philips_dual_echo_mag_phase",  # 120 instances in one series: the one cancelled
    "siemens_agfa_pair_original",  # an accession number and a referring physician
    "siemens_xa10_enhanced_fmri",  # referring physician Luci
    "d2n_ct_gantry_tilt",  # the CT; the same patient ID as the next
    "d2n_hitachi_mr",  # implicit VR little endian
]
XA30_STUDY = "1.3.12.2.1107.5.2.43.67093.30000023010910000844400000021"
PHILIPS_STUDY = "1.3.46.670589.11.38109.5.0.6136.2023102414291962000"

CANCEL = 0xFE00


@dataclass(frozen=True)
class Header:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    study_date: str
    patient_id: str
    accession_number: str
    referring_physician: str
    modality: str
    series_number: int


def read_header(path: Path) -> Header:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Header(
        path=path,
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        sop_uid=ds.SOPInstanceUID,
        study_date=ds.get("StudyDate", ""),
        patient_id=ds.get("PatientID", ""),
        accession_number=ds.get("AccessionNumber") or "",
        referring_physician=str(ds.get("ReferringPhysicianName") or ""),
        modality=ds.Modality,
        series_number=int(ds.SeriesNumber),
    )


@pytest.fixture(scope="module")
def headers(testdata: Path) -> list[Header]:
    found = [read_header(p) for folder in PACS_FOLDERS for p in dicom_files(testdata / folder)]
    assert len({h.sop_uid for h in found}) == len(found) == 308
    return found


def studies_of(headers: list[Header]) -> dict[str, list[Header]]:
    studies: dict[str, list[Header]] = {}
    for header in headers:
        studies.setdefault(header.study_uid, []).append(header)
    return studies


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreScp]:
    """The move destination the PACS know as DCMDB, standing in for dcmdb's receiver."""
    with StoreScp(tmp_path_factory.mktemp("destination") / "received", AE_TITLE) as scp:
        yield scp


@pytest.fixture
def moved(destination: StoreScp) -> StoreScp:
    destination.clear()
    return destination


@pytest.fixture(scope="module", params=["dcmqrscp", "orthanc"])
def pacs(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    destination: StoreScp,
    headers: list[Header],
) -> Iterator[Dcmqrscp | Orthanc]:
    kind = Dcmqrscp if request.param == "dcmqrscp" else Orthanc
    with kind(
        tmp_path_factory.mktemp(request.param), (AE_TITLE, "127.0.0.1", destination.port)
    ) as peer:
        peer.fill(h.path for h in headers)
        yield peer


@pytest.fixture
def peer(pacs: Dcmqrscp | Orthanc) -> Peer:
    return Peer(pacs.name, pacs.ae_title, "127.0.0.1", pacs.port)


def moved_uids(scp: StoreScp) -> set[str]:
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in scp.received()}


# -- configuration ----------------------------------------------------------------------


def test_parses_the_peers_setting() -> None:
    peers = parse_peers("PACS1@10.0.0.5:104, ARCHIVE@pacs.example.org:11112,", "DCMDB")
    assert peers == [
        Peer("PACS1", "PACS1", "10.0.0.5", 104, "DCMDB"),
        Peer("ARCHIVE", "ARCHIVE", "pacs.example.org", 11112, "DCMDB"),
    ]
    assert parse_peers("V6@[::1]:104", "ME")[0].host == "::1"
    assert parse_peers("", "DCMDB") == []
    for bad, why in [
        ("PACS1@host", "expected AETITLE@host:port"),
        ("host:104", "expected AETITLE@host:port"),
        ("PACS1@host:port", "expected AETITLE@host:port"),
        ("@host:104", "expected AETITLE@host:port"),
        ("PACS1@host:70000", "port 70000 is not between 1 and 65535"),
        ("THIS_AE_IS_TOO_LONG@host:104", "'THIS_AE_IS_TOO_LONG' is not an AE title"),
    ]:
        with pytest.raises(ValueError, match=f"^DCMDB_PACS entry '{re.escape(bad)}': {why}"):
            parse_peers(f"GOOD@h:1,{bad}", "DCMDB")
    with pytest.raises(ValueError, match="more than once: A"):
        parse_peers("A@h:1,A@g:2", "DCMDB")


def test_loads_a_peers_file(tmp_path: Path) -> None:
    path = tmp_path / "pacs.yaml"
    path.write_text(
        "- {name: main, ae_title: PACS1, host: 10.0.0.5, port: 104}\n"
        "- {name: research, ae_title: RPACS, host: r.example.org, port: 4242,\n"
        "   calling_ae: DCMDB_R, retrieve: get, tls: true}\n"
        "- {name: console, ae_title: MR1, host: mr1, port: 104, role: scanner,\n"
        "   keeps_days: 28, move_destination: DCMDB_MR}\n"
    )
    assert load_peers_file(path, "DCMDB") == [
        Peer("main", "PACS1", "10.0.0.5", 104, "DCMDB", "move"),
        Peer("research", "RPACS", "r.example.org", 4242, "DCMDB_R", "get", tls=True),
        Peer(
            "console",
            "MR1",
            "mr1",
            104,
            "DCMDB",
            role="scanner",
            keeps_days=28,
            move_destination="DCMDB_MR",
        ),
    ]
    for text, complaint in [
        ("- {name: a, ae_title: A, host: h}\n", "needs name, ae_title, host and port"),
        ("- {name: a, ae_title: A, host: h, port: 1, retrieve: push}\n", "move or get"),
        ("- {name: a, ae_title: A, host: h, port: '1'}\n", "port must be a number"),
        ("- {name: a, ae_title: A, host: h, port: 1, colour: red}\n", "unknown keys"),
        ("- {name: a, ae_title: A, host: h, port: 1, tls: 'yes please'}\n", "true or false"),
        ("- {name: a, ae_title: A, host: h, port: 1, role: modality}\n", "pacs or scanner"),
        ("- {name: a, ae_title: A, host: h, port: 1, keeps_days: 0}\n", "keeps_days"),
        ("- {name: a, ae_title: A, host: h, port: 1, keeps_days: x}\n", "number of days"),
        ("- {name: a, ae_title: A, host: h, port: 1, move_destination: ''}\n", "AE title"),
        ("name: a\n", "a list"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{complaint}"):
            load_peers_file(path, "DCMDB")


# -- C-FIND -----------------------------------------------------------------------------


def expected_match(study: list[Header], query: StudyQuery) -> bool:
    first = study[0]
    if query.study_date is not None:
        low, dash, high = query.study_date.partition("-")
        high = (high or "99999999") if dash else low
        if not low <= first.study_date <= high:
            return False
    if query.modality is not None and query.modality not in {h.modality for h in study}:
        return False
    return all(
        value is None or fnmatchcase(actual, value)
        for value, actual in [
            (query.patient_id, first.patient_id),
            (query.accession_number, first.accession_number),
            (query.study_uid, first.study_uid),
            (query.referring_physician, first.referring_physician),
        ]
    )


QUERIES = {
    "everything": StudyQuery(),
    "date": StudyQuery(study_date="20230113"),
    "date range": StudyQuery(study_date="20200101-20231231"),
    "open date range": StudyQuery(study_date="20240101-"),
    "patient": StudyQuery(patient_id="dicom2nifti"),
    "modality CT": StudyQuery(modality="CT"),
    "modality and date": StudyQuery(modality="MR", study_date="20180101-20231231"),
    "uid": StudyQuery(study_uid=XA30_STUDY),
    "accession number": StudyQuery(accession_number="UMCA2198906"),
    "physician wildcard": StudyQuery(referring_physician="KUIJK*"),
    "physician": StudyQuery(referring_physician="Luci"),
    "nothing": StudyQuery(patient_id="nobody"),
}


@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
def test_finds_the_studies_whose_headers_match(
    pacs: Dcmqrscp | Orthanc, peer: Peer, headers: list[Header], query: StudyQuery
) -> None:
    expected = {
        uid: study for uid, study in studies_of(headers).items() if expected_match(study, query)
    }
    found = find_studies(peer, query)
    assert sorted(match.study_uid for match in found) == sorted(expected)
    for match in found:
        study = expected[match.study_uid]
        first = study[0]
        assert match.study_date == first.study_date
        assert match.patient_id == first.patient_id
        assert match.accession_number == first.accession_number
        assert match.referring_physician == first.referring_physician
        if query.modality is not None:
            assert query.modality in match.modalities
        if pacs.gives_counts:
            assert match.modalities == tuple(sorted({h.modality for h in study}))
            assert match.series_count == len({h.series_uid for h in study})
            assert match.instance_count == len(study)
        else:  # dcmqrscp says neither
            assert match.series_count is match.instance_count is None


def test_finds_each_series_and_counts_its_instances(
    pacs: Dcmqrscp | Orthanc, peer: Peer, headers: list[Header]
) -> None:
    for study_uid, study in studies_of(headers).items():
        series = {s.series_uid: s for s in find_series(peer, study_uid)}
        assert sorted(series) == sorted({h.series_uid for h in study})
        for uid, match in series.items():
            files = [h for h in study if h.series_uid == uid]
            assert match.modality == files[0].modality
            assert match.series_number == files[0].series_number
            if pacs.gives_counts:
                assert match.instance_count == len(files)
            else:
                assert match.instance_count is None
            assert count_instances(peer, study_uid, uid) == len(files)
        counted = {s.series_uid: s.instance_count for s in counted_series(peer, study_uid)}
        assert counted == {uid: sum(h.series_uid == uid for h in study) for uid in series}


def test_keeps_identifiers_out_of_the_logs(
    peer: Peer,
    moved: StoreScp,
    headers: list[Header],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agfa = next(h for h in headers if h.accession_number == "UMCA2198906")
    # pynetdicom's message logging on, and its logger at DEBUG, whatever a service's
    # logging set up earlier in this process made of them.
    monkeypatch.setattr(pynetdicom_config, "LOG_HANDLER_LEVEL", "standard")
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        assert len(find_studies(peer, StudyQuery(patient_id="dicom2nifti"))) == 2
        assert find_studies(peer, StudyQuery(accession_number="UMCA2198906"))
        assert retrieve(peer, AE_TITLE, agfa.study_uid).succeeded
    assert "C-FIND" in caplog.text and "C-MOVE" in caplog.text  # pynetdicom logged...
    for identifier in ("dicom2nifti", "UMCA2198906", agfa.patient_id, "KUIJK"):
        assert identifier not in caplog.text  # ...but no identifier


# -- C-MOVE -----------------------------------------------------------------------------


def test_moves_exactly_the_instances_of_a_study(
    peer: Peer, moved: StoreScp, headers: list[Header]
) -> None:
    source = {h.sop_uid for h in headers if h.study_uid == XA30_STUDY}
    seen: list[Progress] = []
    result = retrieve(peer, AE_TITLE, XA30_STUDY, progress=seen.append)
    assert result.succeeded and result.reason is None, result
    assert (result.status, result.completed, result.failed, result.remaining) == (0, 101, 0, 0)
    assert moved_uids(moved) == source
    remaining = [p.remaining for p in seen]
    assert remaining[-1] == 0 and remaining[0] == len(source) - 1
    assert remaining == sorted(remaining, key=lambda r: -(r or 0))  # never goes up
    assert [p.completed for p in seen] == sorted(p.completed for p in seen)
    assert seen[-1] == Progress(completed=101, failed=0, warning=0, remaining=0)


def test_moves_only_the_series_asked_for(
    peer: Peer, moved: StoreScp, headers: list[Header]
) -> None:
    localizer = next(
        h.series_uid for h in headers if h.study_uid == XA30_STUDY and h.series_number == 2001
    )
    ge = [h for h in headers if h.patient_id == "FF Laser1"]
    ge_series = sorted({h.series_uid for h in ge})
    assert len(ge_series) == 2

    result = retrieve(peer, AE_TITLE, XA30_STUDY, [localizer])
    assert result.succeeded and result.completed == 5
    assert moved_uids(moved) == {h.sop_uid for h in headers if h.series_uid == localizer}

    moved.clear()
    seen: list[Progress] = []
    result = retrieve(peer, AE_TITLE, ge[0].study_uid, ge_series, progress=seen.append)
    assert result.succeeded and result.completed == len(ge) == 71, result
    assert moved_uids(moved) == {h.sop_uid for h in ge}
    assert seen[-1] == Progress(completed=71, failed=0, warning=0, remaining=0)


def test_kept_associations_move_study_after_study_on_one_association(
    peer: Peer, moved: StoreScp, headers: list[Header]
) -> None:
    studies = sorted({h.study_uid for h in headers})[:3]
    kept = MoveAssociations(peer)
    try:
        first = kept.current()
        for uid in studies:
            result = retrieve(peer, AE_TITLE, uid, association=kept.current())
            assert result.succeeded, result
        assert kept.current() is first and first.is_established
        first.abort()  # lost: the next study gets a new one
        again = kept.current()
        assert again is not first and again.is_established
    finally:
        kept.close()
    assert not again.is_established  # released at the end
    assert moved_uids(moved) == {h.sop_uid for h in headers if h.study_uid in studies}


def test_a_move_to_a_destination_the_pacs_does_not_know_fails_with_the_reason(
    peer: Peer, moved: StoreScp
) -> None:
    result = retrieve(peer, "NOWHERE", XA30_STUDY)
    assert not result.succeeded
    assert result.status == 0xA801 or 0xC000 <= result.status <= 0xCFFF  # Orthanc: 0xC000
    assert result.reason is not None and "NOWHERE" in result.reason
    if result.status == 0xA801:
        assert result.reason == "move destination NOWHERE unknown to the PACS (0xA801)"
    assert moved.received() == []


def test_cancelling_stops_a_move(peer: Peer, moved: StoreScp, headers: list[Header]) -> None:
    total = sum(1 for h in headers if h.study_uid == PHILIPS_STUDY)
    seen: list[Progress] = []
    result = retrieve(
        peer,
        AE_TITLE,
        PHILIPS_STUDY,
        progress=seen.append,
        cancelled=lambda: bool(seen) and seen[-1].completed >= 2,
    )
    assert result.status == CANCEL and result.reason == "cancelled (0xFE00)", result
    assert 2 <= result.completed < total
    assert result.remaining > 0
    assert len(moved.received()) < total


def test_a_tuned_association_sends_at_once_and_keeps_its_responses(moved: StoreScp) -> None:
    ae = AE(ae_title="TUNED")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", moved.port, ae_title=moved.ae_title)
    assert assoc.is_established
    try:
        tuned_requestor(assoc)
        connection = assoc.dul.socket.socket
        assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        # A response that came in while no send_* call was waiting yet stays for the
        # one that will; pynetdicom's association thread used to take it (and drop it).
        response = C_ECHO()
        response.MessageIDBeingRespondedTo, response.Status = 1, 0x0000
        assoc.dimse.msg_queue.put((1, response))
        time.sleep(0.2)  # the association thread looks at the queue every millisecond
        assert assoc.dimse.get_msg(block=False) == (1, response)
    finally:
        assoc.release()


def test_an_unreachable_pacs_raises_a_clear_error() -> None:
    gone = Peer("gone", "GONE", "127.0.0.1", free_port())
    message = r"PACS gone \(GONE@127\.0\.0\.1:\d+\) unreachable: connection refused"
    with pytest.raises(PacsError, match=message):
        find_studies(gone, StudyQuery())
    with pytest.raises(PacsError, match=message):
        retrieve(gone, AE_TITLE, XA30_STUDY)
    with pytest.raises(PacsError, match="unreachable: .*name"):
        find_series(Peer("bad", "BAD", "no-such-host.invalid", 104), XA30_STUDY)


def test_a_silent_pacs_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        port = silent.getsockname()[1]
        with pytest.raises(PacsError, match="did not answer the association request within 1 s"):
            find_studies(Peer("mute", "MUTE", "127.0.0.1", port), StudyQuery(), timeout=1)


def test_a_rejected_association_raises_the_pacs_reason(tmp_path: Path) -> None:
    with Dcmqrscp(tmp_path, (AE_TITLE, "127.0.0.1", free_port())) as pacs:
        wrong = Peer("wrong", "NOT_ITS_TITLE", "127.0.0.1", pacs.port)
        # dcmqrscp closes the connection right after its A-ASSOCIATE-RJ; now and then
        # pynetdicom sees the close before the rejection, and only knows the connection closed.
        with pytest.raises(
            PacsError,
            match="association rejected by PACS wrong .*AE title"
            "|PACS wrong .* closed the connection without answering",
        ):
            find_studies(wrong, StudyQuery())


# -- C-GET ------------------------------------------------------------------------------


def test_gets_every_instance_through_the_store_callback(
    pacs: Dcmqrscp | Orthanc, headers: list[Header]
) -> None:
    getter = Peer(pacs.name, pacs.ae_title, "127.0.0.1", pacs.port, retrieve="get")
    with pytest.raises(ValueError, match="store callback"):
        retrieve(getter, AE_TITLE, XA30_STUDY)

    stored: dict[str, tuple[str, str]] = {}

    def store(data: bytes, syntax: str, sop_class: str, sop_instance: str) -> None:
        uid = UID(syntax)
        ds = read_dataset(BytesIO(data), uid.is_implicit_VR, uid.is_little_endian)
        assert (ds.SOPClassUID, ds.SOPInstanceUID) == (sop_class, sop_instance)
        stored[sop_instance] = (sop_class, ds.StudyInstanceUID)

    for study_uid in (XA30_STUDY, "1.2.826.0.1.3680043.8.498.172569766509356122702857879"):
        source = {h.sop_uid for h in headers if h.study_uid == study_uid}
        stored.clear()
        seen: list[Progress] = []
        result = retrieve(getter, AE_TITLE, study_uid, store=store, progress=seen.append)
        assert result.succeeded and result.completed == len(source), result
        assert set(stored) == source
        assert {study for _, study in stored.values()} == {study_uid}
        assert seen[-1].remaining == 0


def test_instances_the_store_callback_refuses_count_as_failed(
    pacs: Dcmqrscp | Orthanc, headers: list[Header]
) -> None:
    getter = Peer(pacs.name, pacs.ae_title, "127.0.0.1", pacs.port, retrieve="get")
    ct = [h for h in headers if h.modality == "CT"]

    def full_disk(data: bytes, syntax: str, sop_class: str, sop_instance: str) -> None:
        raise OSError(28, "No space left on device")

    result = retrieve(getter, AE_TITLE, ct[0].study_uid, store=full_disk)
    assert not result.succeeded
    assert (result.completed, result.failed) == (0, len(ct)), result
    assert result.status == 0xA702  # both say so when every sub-operation failed
    assert result.reason == f"{len(ct)} of {len(ct)} instances failed to arrive (0xA702)"

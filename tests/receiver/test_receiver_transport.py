"""The event-driven storage SCP in services.receiver.transport, against real peers.

DCMTK's storescu/echoscu and pynetdicom's own SCU talk to a server started
in-process; hostile PDUs go over raw sockets. Every test also checks that no
thread or file descriptor outlives its associations.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import struct
import subprocess
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_messages import (
    C_ECHO_RQ,
    C_GET_RSP,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
)
from pynetdicom.dimse_primitives import C_ECHO, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.receiver.transport import (
    DEFAULT_MAXIMUM_PDU_SIZE,
    check_pynetdicom_version,
    decode_c_store_rq,
    decode_c_store_rsp,
    dul,
    encode_c_store_rq,
    encode_c_store_rsp,
    encode_retrieve_rsp,
    start_storage_server,
)
from shared.errors import ConfigurationError
from tests.conftest import require_tool
from tests.support import accepts, free_port, wait_for
from tests.system import self_signed

pytestmark = pytest.mark.integration

AET = "TRANSPORT"
PREAMBLE = b"\0" * 128 + b"DICM"
MIB = 1024 * 1024

# One folder per encoding we must carry unchanged: every transfer syntax in the
# test data, and objects that are not images.
FOLDERS = [
    "siemens_transfer_syntaxes",
    "pydicom_mr_small_transfer_syntax_variants",
    "pydicom_nonimage_objects",
    "pydicom_small_singles",
    "d2n_mr_4slice_j2k",
    "d2n_mr_4slice_jpegls",
]


def _open_fds() -> set[str]:
    """Open sockets and pipes: what an association holds (a library may open other files
    once per process, lazily, and keep them)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
        if target.startswith(("socket:", "pipe:")):
            found.add(f"{fd} {target}")
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every association thread and socket must be gone shortly after a test."""
    threads, fds = threading.active_count(), _open_fds()
    yield
    wait_for(lambda: threading.active_count() <= threads, 30, "the association threads to end")
    wait_for(lambda: _open_fds() <= fds, 30, "the association's sockets and pipes to close")


class Receiver:
    """The server under test, with a handler that writes what it receives."""

    def __init__(self, out_dir: Path, **options: Any) -> None:
        self.out_dir = out_dir
        self.stored: list[tuple[str, str, Path]] = []  # (SOP Instance UID, syntax, file)
        self.events: list[str] = []
        self.pdu_sizes: list[int] = []
        self._names = itertools.count()
        self.ae = AE(ae_title=AET)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        for name in ("acse_timeout", "network_timeout"):
            if name in options:
                setattr(self.ae, name, options.pop(name))
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: self._note("echo", 0x0000)),
            (evt.EVT_RELEASED, lambda event: self._note("released")),
            (evt.EVT_ABORTED, lambda event: self._note("aborted")),
            (evt.EVT_CONN_CLOSE, lambda event: self._note("closed")),
            (evt.EVT_DATA_RECV, lambda event: self.pdu_sizes.append(len(event.data))),
            *options.pop("extra_handlers", []),
        ]
        self.server = start_storage_server(self.ae, ("127.0.0.1", 0), handlers, **options)
        self.port = self.server.server_address[1]

    def _note(self, what: str, result: Any = None) -> Any:
        self.events.append(what)
        return result

    def _on_store(self, event: evt.Event) -> int:
        path = self.out_dir / f"{next(self._names):04d}.dcm"
        with path.open("wb") as f:
            f.write(PREAMBLE)
            write_file_meta_info(f, event.file_meta, enforce_standard=True)
            f.write(event.request.DataSet.getvalue())
        syntax = str(event.context.transfer_syntax)
        self.stored.append((str(event.request.AffectedSOPInstanceUID), syntax, path))
        return 0x0000

    def stop(self) -> None:
        self.ae.shutdown()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(**options: Any) -> Receiver:
        started.append(Receiver(tmp_path, **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def never_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the receiver's cap on each wait far longer than the peers' timeouts.

    Every state change wakes the receiver's threads; the cap only bounds the cost of
    a wake-up that was missed. Raised, one missed wake-up times the peer out.
    """
    monkeypatch.setattr(dul, "MAX_WAIT", 30.0)


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    # Without TCP_NODELAY DCMTK stalls ~40 ms per message on loopback
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [require_tool(tool), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _own_syntax_profile(path: Path, files: list[Path]) -> Path:
    """DCMTK profiles: "Own" has one context per (SOP class, syntax) of `files`.

    storescu's built-in proposals convert compressed and big-endian files; with
    a context per file's own syntax it sends every file as it is. "Accept" is
    the same for an SCP, which wants one context per SOP class.
    """
    pairs = set()
    for file in files:
        ds = dcmread(file, force=True, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if meta else None
        pairs.add((str(ds.SOPClassUID), str(syntax or ImplicitVRLittleEndian)))
    syntaxes = sorted({syntax for _, syntax in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, syntax in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {syntax}"]
    lines.append("[All]")
    lines += [f"TransferSyntax{i} = {syntax}" for i, syntax in enumerate(syntaxes, 1)]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for i, (sop_class, syntax) in enumerate(sorted(pairs), 1):
        lines.append(f"PresentationContext{i} = {sop_class}\\TS{syntaxes.index(syntax)}")
    lines.append("[AcceptContexts]")
    for i, sop_class in enumerate(sorted({sop_class for sop_class, _ in pairs}), 1):
        lines.append(f"PresentationContext{i} = {sop_class}\\All")
    lines += ["[[Profiles]]", "[Own]", "PresentationContexts = Contexts"]
    lines += ["[Accept]", "PresentationContexts = AcceptContexts"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file exactly as stored, after its meta group."""
    raw = path.read_bytes()
    (meta_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw[132 + 12 + meta_length :]


def _as_received_by_dcmtk(profile: Path, files: list[Path], out: Path) -> dict[tuple, list]:
    """{(SOP Instance UID, syntax): [data set bytes]} as DCMTK's storescp receives them.

    storescu re-encodes what it sends (an OW may go out as OB), so the files on
    disk are no reference for the bytes on the wire; storescp in bit-preserving
    mode writes exactly what it read.
    """
    out.mkdir()
    port = free_port()
    command = [require_tool("storescp"), "-xf", str(profile), "Accept", "+B", "+uf"]
    command += ["-od", str(out), str(port)]
    scp = subprocess.Popen(command, env={**os.environ, "TCP_NODELAY": "1"})
    try:
        wait_for(lambda: accepts(port), 30, "storescp did not start")
        args = ["-aec", "ANY", "-xf", str(profile), "Own", "127.0.0.1", str(port)]
        result = _dcmtk("storescu", *args, *map(str, files))
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    received: dict[tuple, list] = {}
    for path in out.iterdir():
        meta = dcmread(path, stop_before_pixels=True).file_meta
        key = (str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))
        received.setdefault(key, []).append(_dataset_bytes(path))
    return received


@pytest.mark.parametrize(
    "options",
    [
        {},
        # pynetdicom's own DIMSE decoding runs whenever somebody listens to
        # EVT_DIMSE_RECV/SENT
        {"maximum_pdu_size": 16384, "standard_logging": True},
    ],
    ids=["fast-path", "16k-pdu-pynetdicom-dimse"],
)
@pytest.mark.usefixtures("never_polls")
def test_storescu_files_arrive_unchanged_in_their_own_syntax(
    receiver: Callable[..., Receiver],
    testdata: Path,
    tmp_path: Path,
    options: dict[str, Any],
) -> None:
    server = receiver(**options)
    files = sorted(f for folder in FOLDERS for f in (testdata / folder / "dicom").iterdir())
    profile = _own_syntax_profile(tmp_path / "own.cfg", files)

    result = _dcmtk(
        "storescu", "-aec", AET, "-xf", str(profile), "Own", "-pdu", "131072", "-td", "5",
        "127.0.0.1", str(server.port), *map(str, files),
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Converting transfer syntax" not in result.stdout + result.stderr
    assert len(server.stored) == len(files)
    remaining = list(server.stored)
    for file in files:
        source = dcmread(file, force=True)
        meta = getattr(source, "file_meta", None)
        syntax = str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian) if meta else "")
        syntax = syntax or ImplicitVRLittleEndian
        match = [s for s in remaining if s[:2] == (source.SOPInstanceUID, syntax)]
        assert match, f"{file} did not arrive in {syntax}"
        remaining.remove(match[0])
        received = dcmread(match[0][2])
        assert received.file_meta.TransferSyntaxUID == syntax
        assert received.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
        if "PixelData" in source:
            assert received.PixelData == source.PixelData, file
        # storescu drops group lengths and trailing padding
        ignore = {tag for tag in source.keys() if tag.element == 0 or tag == 0xFFFCFFFC}  # noqa: SIM118
        tags = {elem.tag for elem in received} - ignore
        assert tags == {elem.tag for elem in source} - ignore, file
        for tag in tags:
            assert received[tag].value == source[tag].value, (file, tag)
    # and byte for byte as DCMTK's own SCP receives them
    ours: dict[tuple, list] = {}
    for uid, syntax, path in server.stored:
        ours.setdefault((uid, syntax), []).append(_dataset_bytes(path))
    reference = _as_received_by_dcmtk(profile, files, tmp_path / "storescp")
    assert {k: sorted(v) for k, v in ours.items()} == {k: sorted(v) for k, v in reference.items()}

    wait_for(lambda: "closed" in server.events, 30, "the association to close")
    assert server.events == ["released", "closed"]
    maximum = options.get("maximum_pdu_size", DEFAULT_MAXIMUM_PDU_SIZE)
    # storescu fills its PDUs up to (a few bytes short of) our maximum
    assert maximum - 64 < max(server.pdu_sizes) - 6 <= maximum


def test_pynetdicom_scu_c_store_and_c_echo(
    receiver: Callable[..., Receiver], testdata: Path
) -> None:
    server = receiver(maximum_pdu_size=8192)
    source = testdata / "pydicom_small_singles" / "dicom" / "CT_small.dcm"
    ds = dcmread(source)
    scu = AE(ae_title="PYSCU")
    scu.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", server.port, ae_title=AET)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    status = assoc.send_c_store(ds)
    assoc.release()

    assert status.Status == 0x0000
    assert max(server.pdu_sizes) == 8192 + 6  # PDUs of exactly our maximum pass
    assert [s[0] for s in server.stored] == [ds.SOPInstanceUID]
    assert _dataset_bytes(server.stored[0][2]) == _dataset_bytes(source)
    wait_for(lambda: "closed" in server.events, 30, "the association to close")
    assert server.events == ["echo", "released", "closed"]


@pytest.mark.usefixtures("never_polls")
def test_tls(receiver: Callable[..., Receiver], testdata: Path, tmp_path: Path) -> None:
    """TLS sockets hold decrypted bytes that select() does not see."""
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = receiver(maximum_pdu_size=4096, ssl_context=server_context)
    source = testdata / "pydicom_small_singles" / "dicom" / "CT_small.dcm"
    ds = dcmread(source)
    scu = AE(ae_title="PYSCU")
    scu.dimse_timeout = 5
    scu.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    client_context = ssl.create_default_context(cafile=str(cert))
    assoc = scu.associate(
        "127.0.0.1", server.port, ae_title=AET, tls_args=(client_context, "localhost")
    )
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).get("Status") for _ in range(3)]
    assoc.release()

    assert statuses == [0x0000] * 3
    assert [_dataset_bytes(path) for *_, path in server.stored] == [_dataset_bytes(source)] * 3
    wait_for(lambda: {"released", "closed"} <= set(server.events), 30, "a release, then the close")


def test_echoscu(receiver: Callable[..., Receiver]) -> None:
    server = receiver()
    result = _dcmtk("echoscu", "-aec", AET, "127.0.0.1", str(server.port))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "closed" in server.events, 30, "the association to close")
    # EVT_RELEASED comes before EVT_CONN_CLOSE, as with pynetdicom's own server
    assert server.events == ["echo", "released", "closed"]


def test_storescu_abort_fires_aborted_and_closed(
    receiver: Callable[..., Receiver], testdata: Path
) -> None:
    server = receiver()
    file = testdata / "pydicom_small_singles" / "dicom" / "CT_small.dcm"
    result = _dcmtk("storescu", "--abort", "-aec", AET, "127.0.0.1", str(server.port), str(file))
    assert result.returncode == 0, result.stderr
    # The DUL thread closes the connection on the A-ABORT; the association thread
    # then reports the abort: the two events come from different threads, in either order.
    wait_for(lambda: {"aborted", "closed"} <= set(server.events), 30, "an abort, then the close")
    assert "released" not in server.events
    assert len(server.stored) == 1


def test_rejected_association_ends_cleanly(receiver: Callable[..., Receiver]) -> None:
    def reject(event: evt.Event) -> None:
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)

    server = receiver(extra_handlers=[(evt.EVT_REQUESTED, reject)])
    result = _dcmtk("echoscu", "-aec", AET, "127.0.0.1", str(server.port))
    assert result.returncode != 0
    assert "echo" not in server.events


def _send_until_closed(sock: socket.socket, budget: int) -> int:
    """Send junk until the peer closes or `budget` bytes are out; return bytes sent."""
    chunk, sent = b"\0" * 65536, 0
    sock.settimeout(5)
    try:
        while sent < budget:
            sent += sock.send(chunk)
    except OSError:  # reset, broken pipe or a peer that stopped reading
        pass
    return sent


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_oversized_pdu_before_association_is_refused_without_allocating(
    receiver: Callable[..., Receiver],
) -> None:
    server = receiver()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))  # a 4 GiB A-ASSOCIATE-RQ
            sent = _send_until_closed(sock, budget=64 * MIB)
            reply = _read_until_closed(sock)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sent < 64 * MIB, "the server kept reading a PDU it should have refused"
    assert peak - before < 2 * MIB
    assert reply in (b"", b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT if any
    wait_for(lambda: "closed" in server.events, 30, "the association to close")


def _padded_echo_pdu(context_id: int, message_id: int, pdu_length: int) -> bytes:
    """A valid P-DATA-TF of `pdu_length` carrying a C-ECHO-RQ.

    An unknown command element pads it; pynetdicom ignores such elements, so
    only its declared length can make a receiver refuse it.
    """
    echo = C_ECHO()
    echo.MessageID = message_id
    echo.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    command = encode(message.command_set, True, True)
    padding = pdu_length - 6 - len(command) - 8  # PDV header, element header
    command += struct.pack("<HHL", 0x0000, 0x0003, padding) + b"\0" * padding
    pdv = struct.pack(">LBB", 2 + len(command), context_id, 0x03) + command
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def test_pdu_longer_than_negotiated_maximum_aborts_association(
    receiver: Callable[..., Receiver],
) -> None:
    server = receiver(maximum_pdu_size=16384)
    scu = AE(ae_title="PYSCU")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", server.port, ae_title=AET)
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 16384
    context_id = assoc.accepted_contexts[0].context_id
    raw = assoc.dul.socket.socket  # write beside pynetdicom, which keeps reading

    raw.sendall(_padded_echo_pdu(context_id, 1, 16384))  # exactly what we agreed
    wait_for(lambda: "echo" in server.events, 30, "the C-ECHO")
    raw.sendall(_padded_echo_pdu(context_id, 2, 16385))  # one byte more

    wait_for(lambda: assoc.is_aborted, 30, "the peer to see the abort")
    wait_for(lambda: {"aborted", "closed"} <= set(server.events), 30, "an abort, then the close")
    assert server.events.count("echo") == 1
    raw.close()  # pynetdicom leaves it open when shutdown() fails


def test_acse_timeout_closes_a_silent_connection(receiver: Callable[..., Receiver]) -> None:
    server = receiver(acse_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        assert _read_until_closed(sock) == b""  # within the read's 5 s timeout
    wait_for(lambda: "closed" in server.events, 30, "the association to close")


def test_network_timeout_aborts_an_idle_association(receiver: Callable[..., Receiver]) -> None:
    server = receiver(network_timeout=0.5)
    scu = AE(ae_title="PYSCU")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", server.port, ae_title=AET)
    assert assoc.is_established
    wait_for(lambda: assoc.is_aborted, 30, "the peer to see the abort")
    wait_for(lambda: "closed" in server.events, 30, "the association to close")
    assert "aborted" in server.events


def test_shutdown_aborts_open_associations(receiver: Callable[..., Receiver]) -> None:
    server = receiver()
    scu = AE(ae_title="PYSCU")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", server.port, ae_title=AET)
    assert assoc.is_established
    server.stop()
    wait_for(lambda: assoc.is_aborted, 30, "the peer to see the abort")
    assert server.server not in server.ae._servers


def _pynetdicom_rsp_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xB000, 0xC211])
@pytest.mark.parametrize("class_uid", ["1.2.840.10008.5.1.4.1.1.4", None])
@pytest.mark.parametrize("instance_uid", ["1.2.3.4", "1.2.3.45", None])
def test_c_store_rsp_encoding_matches_pynetdicom(
    status: int, class_uid: str | None, instance_uid: str | None
) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = class_uid
    rsp.AffectedSOPInstanceUID = instance_uid
    rsp.Status = status
    assert encode_c_store_rsp(rsp) == _pynetdicom_rsp_bytes(rsp)


def test_c_store_rsp_with_error_comment_is_left_to_pynetdicom() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0xC000
    rsp.ErrorComment = "nope"
    assert encode_c_store_rsp(rsp) is None


def test_c_store_rsp_with_a_uid_that_is_not_ascii_is_left_to_pynetdicom() -> None:
    """pynetdicom decodes such a UID from a request (warning that it does not conform),
    and the response echoes it."""
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0xC210
    rsp.AffectedSOPInstanceUID = "1.2.\xe9.4"
    assert encode_c_store_rsp(rsp) is None


def _pynetdicom_command_bytes(primitive: Any) -> bytes:
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


@pytest.mark.parametrize("move_originator", [None, ("MOVESCU", 12)])
def test_c_store_rq_decoding_matches_pynetdicom(move_originator: tuple[str, int] | None) -> None:
    request = C_STORE()
    request.MessageID = 65535
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    request.Priority = 1
    request.DataSet = BytesIO(b"\0" * 4)
    if move_originator:
        request.MoveOriginatorApplicationEntityTitle = move_originator[0]
        request.MoveOriginatorMessageID = move_originator[1]
    command = _pynetdicom_command_bytes(request)

    decoded = decode_c_store_rq(command)

    assert decoded is not None
    message = C_STORE_RQ()  # what pynetdicom's receiver does with the same bytes
    message.command_set = decode(BytesIO(command), True, True)
    expected = message.message_to_primitive()
    for name in (
        "MessageID",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "Priority",
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
    ):
        assert getattr(decoded, name) == getattr(expected, name), name


@pytest.mark.parametrize("move_originator", [None, ("MOVESCU", 12), ("DESK_A5", 65535)])
@pytest.mark.parametrize("instance_uid", ["1.2.826.0.1.3680043.8.498.1", "1.2.3.45"])
def test_c_store_rq_encoding_matches_pynetdicom(
    move_originator: tuple[str, int] | None, instance_uid: str
) -> None:
    """What the C-MOVE sender writes is what pynetdicom's send_c_store would."""
    request = C_STORE()
    request.MessageID = 513
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    request.AffectedSOPInstanceUID = instance_uid
    request.Priority = 0
    request.DataSet = BytesIO(b"\0" * 4)
    if move_originator:
        request.MoveOriginatorApplicationEntityTitle = move_originator[0]
        request.MoveOriginatorMessageID = move_originator[1]

    encoded = encode_c_store_rq(
        513, "1.2.840.10008.5.1.4.1.1.4", instance_uid, move_originator=move_originator
    )

    assert encoded == _pynetdicom_command_bytes(request)


@pytest.mark.parametrize("kind", [C_MOVE, C_GET])
@pytest.mark.parametrize(
    ("status", "counts", "comment"),
    [
        (0xFF00, (595, 4, 1, 0), None),
        (0x0000, (None, 600, 0, 0), None),
        (0xFE00, (3, 2, 0, 1), "cancelled by the desktop"),
        (0xA801, (None, None, None, None), "NOBODY is no dcmdb desktop"),
    ],
)
def test_retrieve_rsp_encoding_matches_pynetdicom(
    kind: type, status: int, counts: tuple[int | None, ...], comment: str | None
) -> None:
    """The C-MOVE and C-GET answers written by hand are pynetdicom's, byte for byte."""
    rsp = kind()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    rsp.Status = status
    rsp.ErrorComment = comment
    (
        rsp.NumberOfRemainingSuboperations,
        rsp.NumberOfCompletedSuboperations,
        rsp.NumberOfFailedSuboperations,
        rsp.NumberOfWarningSuboperations,
    ) = counts
    message = C_MOVE_RSP() if kind is C_MOVE else C_GET_RSP()
    message.primitive_to_message(rsp)

    assert encode_retrieve_rsp(rsp) == encode(message.command_set, True, True)


def test_retrieve_rsp_with_an_identifier_is_left_to_pynetdicom() -> None:
    rsp = C_MOVE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.Status = 0xB000
    rsp.Identifier = BytesIO(b"\x08\x00\x58\x00\x00\x00\x00\x00")
    assert encode_retrieve_rsp(rsp) is None


@pytest.mark.parametrize("comment", [None, "out of space", "odd"])
def test_c_store_rsp_decoding_reads_what_pynetdicom_encodes(comment: str | None) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 99
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    rsp.AffectedSOPInstanceUID = "1.2.3.4"
    rsp.Status = 0xA700
    rsp.ErrorComment = comment
    answer = decode_c_store_rsp(_pynetdicom_rsp_bytes(rsp))
    assert answer is not None
    assert (answer.message_id, answer.status, answer.error_comment) == (99, 0xA700, comment)
    # Not an answer: a request, or a command cut short.
    assert decode_c_store_rsp(_pynetdicom_rsp_bytes(rsp)[:-3]) is None
    assert decode_c_store_rsp(encode_c_store_rq(1, "1.2.3", "1.2.3.4")) is None


def test_other_commands_are_left_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    assert decode_c_store_rq(encode(message.command_set, True, True)) is None

    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    request.AffectedSOPInstanceUID = "1.2.3"
    request.DataSet = BytesIO(b"\0" * 4)
    good = _pynetdicom_command_bytes(request)
    bad_uid = good.replace(b"1.2.3\0", b"1.2.\xe9\0")  # pynetdicom refuses non-ASCII
    truncated = good[:-3]
    assert decode_c_store_rq(good) is not None
    assert decode_c_store_rq(bad_uid) is None
    assert decode_c_store_rq(truncated) is None


def test_c_find_is_served_by_pynetdicom_through_its_bound_handler() -> None:
    """The fast path takes over C-STORE only: a service that later work adds (here
    C-FIND) needs nothing but its handler, and pynetdicom serves it as ever."""
    find_model = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root C-FIND

    def on_find(event: evt.Event) -> Iterator[tuple[int, Any]]:
        for uid in ("1.2.3", "1.2.4"):
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            match.StudyInstanceUID = uid
            yield 0xFF00, match

    ae = AE(ae_title=AET)
    ae.add_supported_context(find_model)
    server = start_storage_server(ae, ("127.0.0.1", 0), [(evt.EVT_C_FIND, on_find)])
    try:
        scu = AE()
        scu.add_requested_context(find_model)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title=AET)
        assert assoc.is_established
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        answers = [
            (int(status.Status), found) for status, found in assoc.send_c_find(query, find_model)
        ]
        assoc.release()
    finally:
        ae.shutdown()
    assert [status for status, _ in answers] == [0xFF00, 0xFF00, 0x0000]
    assert [found.StudyInstanceUID for _, found in answers[:2]] == ["1.2.3", "1.2.4"]


def test_the_transport_refuses_any_other_pynetdicom_version() -> None:
    check_pynetdicom_version(pynetdicom.__version__)  # the installed, pinned one
    with pytest.raises(ConfigurationError, match=r"pynetdicom 3\.0\.5 .* pynetdicom 3\.0\.4"):
        check_pynetdicom_version("3.0.5")

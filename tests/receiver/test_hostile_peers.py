"""Hostile DICOM peers against ``dcmdb receiver``: while each attack runs, a
legitimate peer still echoes and stores, the receiver's threads and memory
stay bounded, and the attackers' connections are ended.

The attackers connect from 127.0.0.2 and the legitimate peer from 127.0.0.1,
so that per-host limits can tell them apart, as they would on a network.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.receiver.admission import LIMIT_EXCEEDED_RJ
from tests.conftest import require_tool
from tests.support import wait_for
from tests.system import AE_TITLE, Dcmdb, dcmtk_env, echo, self_signed, storescu

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.2"
MIB = 1024 * 1024
LIMITS = {
    "DCMDB_ACSE_TIMEOUT": "3",
    "DCMDB_NETWORK_TIMEOUT": "5",
    "DCMDB_MAX_ASSOCIATIONS": "12",
    "DCMDB_MAX_ASSOCIATIONS_PER_HOST": "6",
}
SMALL_CT = "pydicom_small_singles/dicom/CT_small.dcm"


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class Receiver:
    def __init__(self, system: Dcmdb, process: subprocess.Popen[bytes]) -> None:
        self.system, self.pid, self.port = system, process.pid, system.port

    def threads(self) -> int:
        return proc_status(self.pid, "Threads")

    def rss_mib(self) -> float:
        return proc_status(self.pid, "VmRSS") / 1024


@pytest.fixture
def start_receiver(tmp_path: Path, broker_url: str) -> Iterator[Callable[..., Receiver]]:
    systems: list[Dcmdb] = []

    def start(**env: str) -> Receiver:
        system = Dcmdb(
            tmp_path / f"data{len(systems)}",
            broker_url,
            f"sqlite:///{tmp_path / 'catalog.sqlite'}",
            extra_env={**LIMITS, **env},
        )
        systems.append(system)
        process = system.start("receiver")
        if "DCMDB_TLS_CERT" not in env:
            system.wait_until_listening()
        return Receiver(system, process)

    yield start
    for system in systems:
        system.stop()


def attacker_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((ATTACKER, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the receiver has closed this connection (what it sent before is read)."""
    sock.setblocking(False)
    try:
        while chunk := sock.recv(65536):
            del chunk
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset
    return True  # EOF


def assert_still_served(receiver: Receiver, testdata: Path) -> None:
    """A C-ECHO and a C-STORE from the legitimate host succeed, each within DCMTK's
    own 5 s timeouts."""
    assert echo(receiver.port), "C-ECHO failed during the attack"
    sent = storescu(
        receiver.port, [testdata / SMALL_CT], extra=["-to", "5", "-ta", "5", "-td", "5"]
    )
    assert sent.returncode == 0, sent.stderr
    stored = list((receiver.system.data_dir / "incoming").glob("*.dcm"))
    assert stored, "the C-STORE during the attack was not stored"


def test_slow_senders_are_cut_off_and_the_rest_refused(
    start_receiver: Callable[..., Receiver], testdata: Path
) -> None:
    receiver = start_receiver()
    baseline = receiver.threads()
    # 20 peers start an A-ASSOCIATE-RQ and trickle it a byte at a time: each
    # read is short, but the request never completes.
    attackers = [attacker_socket(receiver.port) for _ in range(20)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in attackers:
            with_suppressed_os_error(sock.sendall, struct.pack(">BBL", 0x01, 0, 200))
        while not stop.wait(0.5):
            for sock in attackers:
                with_suppressed_os_error(sock.send, b"\x00")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        # Beyond the per-host limit (6), connections are refused at once; the 6 admitted
        # ones are held until the ACSE timeout (3 s).
        wait_for(lambda: sum(closed_by_peer(s) for s in attackers) >= 14, 2.5, "14 refusals")
        assert sum(closed_by_peer(s) for s in attackers) == 14
        assert receiver.threads() <= baseline + 2 * 6 + 2
        assert_still_served(receiver, testdata)
        # The 6 admitted ones are cut off once the ACSE timeout (3 s) has passed.
        wait_for(lambda: all(closed_by_peer(s) for s in attackers), 60, "the trickles to end")
    finally:
        stop.set()
        trickler.join()
        for sock in attackers:
            sock.close()
    wait_for(lambda: receiver.threads() <= baseline, 60, "the threads to go back to the baseline")


def test_a_refused_peer_hears_a_transient_rejection(
    start_receiver: Callable[..., Receiver],
) -> None:
    receiver = start_receiver(DCMDB_MAX_ASSOCIATIONS_PER_HOST="1")
    holder = attacker_socket(receiver.port)
    try:
        second = attacker_socket(receiver.port)
        second.settimeout(5)
        second.sendall(struct.pack(">BBL", 0x01, 0, 68))  # the start of a request
        assert second.recv(64) == LIMIT_EXCEEDED_RJ
        second.close()
        # pynetdicom reads it as a rejection, as a PACS would, and may try again later.
        scu = AE(ae_title="HOSTILE")
        scu.add_requested_context(Verification)
        assoc = scu.associate(
            ATTACKER, receiver.port, ae_title=AE_TITLE, bind_address=(ATTACKER, 0)
        )
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.result == 0x02  # rejected-transient
        assert assoc.acceptor.primitive.diagnostic == 0x02  # local limit exceeded
    finally:
        holder.close()
    assert echo(receiver.port)


def test_a_pdu_trickled_after_association_is_cut_off(
    start_receiver: Callable[..., Receiver], testdata: Path
) -> None:
    receiver = start_receiver()
    scu = AE(ae_title="HOSTILE")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", receiver.port, ae_title=AE_TITLE)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    # A P-DATA-TF announcing 1000 bytes that come one every half second: the
    # network timeout (5 s) bounds the whole PDU, not each read.
    raw.sendall(struct.pack(">BBL", 0x04, 0, 1000))
    started = time.monotonic()
    while not assoc.is_aborted and time.monotonic() - started < 20:
        with_suppressed_os_error(raw.send, b"\x00")
        time.sleep(0.5)
    assert assoc.is_aborted, "the receiver kept waiting for the trickled PDU"
    raw.close()
    assert_still_served(receiver, testdata)


def test_huge_declared_pdus_do_not_grow_memory(
    start_receiver: Callable[..., Receiver], testdata: Path
) -> None:
    receiver = start_receiver()
    before = receiver.rss_mib()
    sent = 0
    # Before the association (A-ASSOCIATE-RQ) and after it (P-DATA-TF), 4 GiB
    # PDUs are announced and 300 MiB sent in all: none is read into memory.
    for _ in range(5):
        with attacker_socket(receiver.port) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
            sent += send_until_closed(sock, 30 * MIB)
    for _ in range(5):
        scu = AE(ae_title="HOSTILE")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", receiver.port, ae_title=AE_TITLE)
        assert assoc.is_established
        raw = assoc.dul.socket.socket
        raw.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
        sent += send_until_closed(raw, 30 * MIB)
        wait_for(lambda assoc=assoc: assoc.is_aborted, 30, "the association to be aborted")
        raw.close()
    assert receiver.rss_mib() - before < 30, f"memory grew after {sent / MIB:.0f} MiB sent"
    assert_still_served(receiver, testdata)


def test_a_silent_tls_client_does_not_hold_up_other_handshakes(
    start_receiver: Callable[..., Receiver], testdata: Path, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    receiver = start_receiver(DCMDB_TLS_CERT=str(cert), DCMDB_TLS_KEY=str(key))
    wait_for(lambda: tls_echo(receiver.port, cert), 30, "the TLS receiver to answer C-ECHO")
    silent = [attacker_socket(receiver.port) for _ in range(3)]  # no ClientHello, ever
    try:
        time.sleep(0.5)
        # DCMTK over TLS, with its own 5 s timeouts, and pynetdicom.
        storescu = require_tool("storescu")
        result = subprocess.run(
            [storescu, "-aec", AE_TITLE, "-to", "5", "-ta", "5", "-td", "5",
             "+tls", str(key), str(cert), "+cf", str(cert),
             "127.0.0.1", str(receiver.port), str(testdata / SMALL_CT)],
            env=dcmtk_env(), capture_output=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert tls_echo(receiver.port, cert)
        # The silent ones are dropped once the ACSE timeout (3 s) bounds their handshake.
        wait_for(lambda: all(closed_by_peer(s) for s in silent), 60, "silent clients to go")
    finally:
        for sock in silent:
            sock.close()
    assert list((receiver.system.data_dir / "incoming").glob("*.dcm"))


def test_a_plain_peer_cannot_talk_to_a_tls_receiver(
    start_receiver: Callable[..., Receiver], tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    receiver = start_receiver(DCMDB_TLS_CERT=str(cert), DCMDB_TLS_KEY=str(key))
    wait_for(lambda: tls_echo(receiver.port, cert), 30, "the TLS receiver to answer C-ECHO")
    assert not echo(receiver.port)
    assert tls_echo(receiver.port, cert)


def test_client_certificates_are_required_when_a_client_ca_is_set(
    start_receiver: Callable[..., Receiver], tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    client_cert, client_key = self_signed(tmp_path / "client")
    receiver = start_receiver(
        DCMDB_TLS_CERT=str(cert), DCMDB_TLS_KEY=str(key), DCMDB_TLS_CLIENT_CA=str(client_cert)
    )
    wait_for(
        lambda: tls_echo(receiver.port, cert, client=(client_cert, client_key)),
        30,
        "the TLS receiver to answer C-ECHO",
    )
    assert not tls_echo(receiver.port, cert)  # no client certificate
    assert not tls_echo(receiver.port, cert, client=(cert, key))  # not signed by that CA


def tls_echo(port: int, ca: Path, client: tuple[Path, Path] | None = None) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(*client)
    scu = AE(ae_title="TLSSCU")
    scu.acse_timeout = scu.network_timeout = 5
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title=AE_TITLE, tls_args=(context, "localhost"))
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    except (OSError, RuntimeError):
        return False
    finally:
        if assoc.is_established:
            assoc.release()


def send_until_closed(sock: socket.socket, budget: int) -> int:
    """Send zeros until the peer closes or ``budget`` bytes are out; how many were sent."""
    sent, chunk = 0, bytes(MIB)
    try:
        # Inside: pynetdicom's own thread may have closed an association's socket already,
        # on the receiver's abort.
        sock.settimeout(5)
        while sent < budget:
            sent += sock.send(chunk)
    except OSError:
        pass
    return sent


def with_suppressed_os_error(send: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(OSError):
        send(data)

"""Thousands of mutated PDUs against ``dcmdb receiver`` run as a process: it never crashes,
answers C-ECHO after every hundred cases, ends every association it was sent, and its
threads and sockets return to where they were.

``--fuzz-cases`` and ``--fuzz-seed`` (or ``scripts/fuzz-pdus``) run more, or other, cases;
a failure names its case, which ``make_case(seed, number, ...)`` makes again.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.headers import Header
from tests.hostile_objects import MR_IMAGE_STORAGE
from tests.pdu_fuzzing import make_case, real_data_sets, run_case, seeds
from tests.raw_peer import A_ABORT, RawAssociation, associate_rq, c_store_rq, pdu, read_pdus
from tests.support import wait_for
from tests.system import Dcmdb, echo, receiver_alone

pytestmark = pytest.mark.integration

CHECK_EVERY = 100


@pytest.fixture
def receiver(tmp_path: Path, broker_url: str) -> Iterator[Dcmdb]:
    with receiver_alone(tmp_path, broker_url) as system:
        yield system


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no thread count for process {pid}")


def sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def test_mutated_pdus_neither_crash_nor_leak(
    receiver: Dcmdb, testdata: Path, request: pytest.FixtureRequest
) -> None:
    cases, seed = request.config.getoption("--fuzz-cases"), request.config.getoption("--fuzz-seed")
    corpus = seeds(real_data_sets(testdata))
    process = receiver.processes[0]
    with RawAssociation(receiver.port, [(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]) as warm:
        assert warm.echo(1) == 0x0000
        warm.release()
    wait_for(lambda: threads(process.pid) == threads(process.pid), 30, "a thread count")
    baseline_threads, baseline_sockets = threads(process.pid), sockets(process.pid)

    statuses: Counter[int] = Counter()
    for number in range(cases):
        case = make_case(seed, number, corpus)
        try:
            outcome = run_case(receiver.port, case)
        except (TimeoutError, AssertionError, OSError) as exc:
            pytest.fail(f"{case.describe(seed)}: {exc!r}")
        statuses.update(outcome.statuses)
        if (number + 1) % CHECK_EVERY and number + 1 != cases:
            continue
        where = f"after {case.describe(seed)}"
        assert process.poll() is None, f"the receiver died {where}"
        assert echo(receiver.port), f"no C-ECHO {where}"
        wait_for(lambda: threads(process.pid) <= baseline_threads, 30, f"threads to end {where}")
        wait_for(lambda: sockets(process.pid) <= baseline_sockets, 30, f"sockets {where}")

    log = receiver.log()
    assert "Exception in thread" not in log  # a thread that died of an uncaught exception
    assert "Exception in handler" not in log  # the C-STORE handler raised
    stored = sorted((receiver.data_dir / "incoming").glob("*.dcm"))
    for path in stored:  # nothing unreadable was acknowledged and kept
        Header.from_part10(path.read_bytes()).identifiers()
    assert len(stored) >= statuses[0x0000]
    quarantined = sorted((receiver.data_dir / "quarantine").glob("*.dcm"))
    for path in quarantined:
        assert json.loads(path.with_suffix(".json").read_text())["reason"]
    assert len(quarantined) >= statuses[0xC210] + statuses[0xC211]
    # the cases reached the handler, both ways
    if cases >= 1000:
        assert statuses[0x0000] and statuses[0xC210] and statuses[0xC211], statuses
    print(f"{cases} cases, seed {seed}: statuses {dict(statuses)}")


# What the fuzzing found, each made to happen on purpose.


def test_a_request_pynetdicom_cannot_negotiate_is_aborted(receiver: Dcmdb) -> None:
    """A presentation context without an abstract syntax made pynetdicom's negotiation raise,
    ending the association's thread; the peer then waited for an answer that never came,
    and its connection stayed open as long as it liked."""
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as sock:
        sock.sendall(associate_rq([(1, None, ["1.2.840.10008.1.2"])]))
        answers = [kind for kind, _body in read_pdus(sock, timeout=30)]
    assert answers == [A_ABORT]
    assert "Exception in thread" not in receiver.log()
    assert echo(receiver.port)


def test_an_abort_with_values_pynetdicom_refuses_ends_the_association(receiver: Dcmdb) -> None:
    """An A-ABORT whose source is no source made a state machine action raise, which ended
    the thread that reads from the peer."""
    with RawAssociation(receiver.port, [(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])]) as raw:
        raw.sock.sendall(pdu(A_ABORT, b"\0\0\xff\xff"))
        assert [kind for kind, _body in read_pdus(raw.sock, timeout=30)] in ([], [A_ABORT])
    wait_for(
        lambda: "association from RAWSCU at 127.0.0.1 aborted" in receiver.log(), 30, "the abort"
    )
    assert "Exception in thread" not in receiver.log()
    assert echo(receiver.port)


def test_a_command_set_with_a_uid_that_is_not_ascii_is_still_quarantined(
    receiver: Dcmdb,
) -> None:
    """The file meta of a quarantined object carries the command set's UIDs: one that was
    not ASCII made the handler raise, and the object was neither answered 0xC210 nor kept."""
    context = [(1, MR_IMAGE_STORAGE, ["1.2.840.10008.1.2.1"])]
    command = c_store_rq(1, MR_IMAGE_STORAGE, "1.2.3.4").replace(b"1.2.3.4\0", b"1.2.\xe9.4\0")
    with RawAssociation(receiver.port, context) as raw:
        assert raw.request(1, command, b"not a data set") == 0xC210
        raw.release()
    (kept,) = (receiver.data_dir / "quarantine").glob("*.dcm")
    assert json.loads(kept.with_suffix(".json").read_text())["reason"]
    assert kept.read_bytes().endswith(b"not a data set")

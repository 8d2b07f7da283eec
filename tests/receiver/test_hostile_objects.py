"""Hostile objects through every service that reads them: refused with a 0xC2xx status and
kept in quarantine with the reason, filed safely when merely strange; no service crashes.

The receiver runs as ``dcmdb receiver`` and gets each object over a real association; the
sorter's filing and the converter get them as files, as they would find them (the refused
ones too: a disk can corrupt a file after it was accepted).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.converter.isolation import Job, run_isolated
from tests.arrivals import Sorter, arrive_as_received
from tests.conftest import fresh_vhost
from tests.hostile_objects import HOSTILE, MR_IMAGE_STORAGE, ODD, Hostile, Odd, part10
from tests.raw_peer import RawAssociation
from tests.system import Dcmdb, echo, receiver_alone

pytestmark = [pytest.mark.integration, pytest.mark.shared_setup()]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dcmdb]:
    vhosts = fresh_vhost()
    try:
        with receiver_alone(tmp_path_factory.mktemp("hostile"), next(vhosts)) as system:
            yield system
    finally:
        next(vhosts, None)  # the virtual host goes


def send(port: int, data_set: bytes, syntax: str) -> int:
    """C-STORE exactly these data set bytes; the status."""
    with RawAssociation(port, [(1, MR_IMAGE_STORAGE, [syntax])]) as association:
        assert association.accepted.contexts == {1: syntax}
        status = association.store(1, MR_IMAGE_STORAGE, "1.2.826.0.1.3680043.8.498.99", data_set)
        association.release()
    return status


def quarantined(system: Dcmdb) -> set[Path]:
    return set((system.data_dir / "quarantine").glob("*.dcm"))


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda hostile: hostile.name)
def test_the_receiver_refuses_and_quarantines(receiver: Dcmdb, hostile: Hostile) -> None:
    before = quarantined(receiver)

    status = send(receiver.port, hostile.data_set, hostile.syntax)

    assert status == hostile.status, f"{status:#06x}"
    kept = quarantined(receiver) - before
    assert len(kept) == 1
    (copy,) = kept
    assert copy.read_bytes().endswith(hostile.data_set)  # as received, behind its meta
    note = json.loads(copy.with_suffix(".json").read_text())
    assert note["reason"] and note["calling_ae"] == "RAWSCU"
    assert receiver.processes[0].poll() is None, "the receiver died"
    assert echo(receiver.port)


@pytest.mark.parametrize("odd", ODD, ids=lambda odd: odd.name)
def test_the_receiver_accepts_strange_but_identifiable_objects(receiver: Dcmdb, odd: Odd) -> None:
    assert send(receiver.port, odd.data_set, odd.syntax) == 0x0000
    stored = [
        p
        for p in (receiver.data_dir / "incoming").glob("*.dcm")
        if p.read_bytes().endswith(odd.data_set)
    ]
    assert len(stored) == 1
    assert echo(receiver.port)
    assert "Traceback" not in receiver.log()


def test_the_receiver_logged_no_traceback(receiver: Dcmdb) -> None:
    """Runs after the others in this module: a handler that raised would show here."""
    assert "Traceback" not in receiver.log()
    assert "Exception in" not in receiver.log()


def test_the_sorter_quarantines_what_it_cannot_read(sorter: Sorter) -> None:
    events = [arrive_as_received(part10(h.data_set, h.syntax), sorter.data) for h in HOSTILE]
    outcomes = sorter.filer.file_batch(events)
    assert all(outcome.filed is None for outcome in outcomes)
    assert not sorter.incoming() and not sorter.archived() and not sorter.instances()
    kept = sorted(sorter.quarantine.glob("*.dcm"))
    assert len(kept) == len(HOSTILE)
    for path in kept:
        assert "unreadable at sorting" in path.with_suffix(".txt").read_text()


def test_the_sorter_files_strange_objects_under_the_archive(sorter: Sorter) -> None:
    events = [arrive_as_received(part10(odd.data_set, odd.syntax), sorter.data) for odd in ODD]
    outcomes = sorter.filer.file_batch(events)
    assert all(outcome.filed is not None for outcome in outcomes)
    archive = sorter.archive.resolve()
    archived = sorter.archived()
    assert len(archived) == len(ODD)
    for relative in archived:
        path = (archive / relative).resolve()
        assert path.is_relative_to(archive), relative
        assert len(Path(relative).parts) == 4, relative
        assert all(1 <= len(part) <= 64 for part in Path(relative).parts), relative
    assert not list(sorter.quarantine.glob("*"))
    assert len(sorter.instances()) == len(ODD)


def test_the_converter_fails_or_skips_without_crashing(tmp_path: Path) -> None:
    objects = [(h.name, part10(h.data_set, h.syntax)) for h in HOSTILE]
    objects += [(o.name, part10(o.data_set, o.syntax)) for o in ODD]
    for name, data in objects:
        series = tmp_path / name
        series.mkdir()
        (series / "1.dcm").write_bytes(data)
        job = Job((series / "1.dcm",), tmp_path / "nifti", name, "1.2.3.5", "1.2.3.6")
        result = run_isolated(job, timeout=120)
        assert result.status in ("failed", "skipped"), (name, result)
        assert result.reason, name
        assert "crashed" not in result.reason and "took over" not in result.reason, (name, result)

"""The streamed ZIP archive: complete, byte for byte, and built a chunk at a time."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import time
import tracemalloc
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from services.api import archives
from services.api.archives import Entry, zip_stream
from tests.conftest import TESTDATA, require_tool

MIB = 1 << 20


def entries_of(folder: Path) -> list[Entry]:
    return [
        Entry(path.relative_to(folder).as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]


def archive_of(entries: Iterable[Entry], **options: int) -> zipfile.ZipFile:
    data = b"".join(zip_stream(entries, **options))
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive


def test_a_real_folder_round_trips(tmp_path: Path) -> None:
    folder = TESTDATA / "siemens_xa30_localizer_2001"  # dicom/ and ref_dcm2niix/
    entries = entries_of(folder)

    archive = archive_of(entries)

    assert archive.namelist() == [entry.name for entry in entries]
    assert any(name.startswith("ref_dcm2niix/") for name in archive.namelist())
    for entry in entries:
        info = archive.getinfo(entry.name)
        assert info.compress_type == zipfile.ZIP_STORED
        assert archive.read(entry.name) == entry.path.read_bytes()
        local = time.localtime(entry.path.stat().st_mtime)
        assert info.date_time == (*local[:5], local[5] // 2 * 2)  # ZIP keeps even seconds
    # and an unzip that is not Python's agrees
    zip_path = tmp_path / "series.zip"
    zip_path.write_bytes(b"".join(zip_stream(entries)))
    subprocess.run([require_tool("unzip"), "-tq", str(zip_path)], check=True)


def test_a_large_file_is_streamed_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big.nii.gz"
    with big.open("wb") as f:
        f.write(os.urandom(MIB + 17))  # data that is not all zeros, across a chunk boundary
        f.truncate(50 * MIB)  # the rest sparse
    out = tmp_path / "out.zip"

    tracemalloc.start()
    try:
        with out.open("wb") as f:
            sizes = [f.write(chunk) for chunk in zip_stream([Entry("big.nii.gz", big)], MIB)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(sizes) >= 50
    assert max(sizes) <= 2 * MIB
    assert peak < 4 * MIB  # a 50 MiB file, never held whole
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        assert archive.getinfo("big.nii.gz").file_size == 50 * MIB
        with archive.open("big.nii.gz") as member, big.open("rb") as original:
            while chunk := member.read(MIB):
                assert chunk == original.read(MIB)


def test_zip64_entries_are_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Files of 2 GiB and over get zip64 headers; lower the threshold to test them cheaply.
    monkeypatch.setattr(archives, "ZIP64_FROM", 1000)
    small, large = tmp_path / "small.json", tmp_path / "large.nii"
    small.write_bytes(b"{}")
    large.write_bytes(os.urandom(5000))
    zip_path = tmp_path / "out.zip"
    zip_path.write_bytes(
        b"".join(zip_stream([Entry("large.nii", large), Entry("small.json", small)]))
    )

    with zipfile.ZipFile(zip_path) as archive:
        assert archive.testzip() is None
        assert archive.read("large.nii") == large.read_bytes()
    subprocess.run([require_tool("unzip"), "-tq", str(zip_path)], check=True)


def test_a_vanished_file_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a.dcm", "c.dcm"):
        (tmp_path / name).write_bytes(name.encode() * 100)
    entries = [
        Entry("Dr_Secret/a.dcm", tmp_path / "a.dcm"),
        Entry("Dr_Secret/b.dcm", tmp_path / "b.dcm"),  # listed, but gone
        Entry("Dr_Secret/c.dcm", tmp_path / "c.dcm"),
    ]

    with caplog.at_level(logging.WARNING, logger="services.api.archives"):
        archive = archive_of(entries)

    assert archive.namelist() == ["Dr_Secret/a.dcm", "Dr_Secret/c.dcm"]
    assert archive.read("Dr_Secret/c.dcm") == b"c.dcm" * 100
    assert "entry 2" in caplog.text
    assert "Secret" not in caplog.text and "b.dcm" not in caplog.text


def test_a_file_that_vanishes_while_streaming_is_left_out(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"1" * 3000)
    second.write_bytes(b"2" * 3000)
    stream = zip_stream([Entry("first", first), Entry("second", second)], chunk_size=1000)

    data = next(stream)
    second.unlink()  # after the listing, before its turn
    data += b"".join(stream)

    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert archive.namelist() == ["first"]


def test_empty_files_and_empty_archives(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.touch()

    assert archive_of([Entry("empty", empty)]).read("empty") == b""
    assert archive_of([]).namelist() == []


def test_timestamps_before_1980_are_clamped(tmp_path: Path) -> None:
    old = tmp_path / "old.dcm"
    old.write_bytes(b"x")
    os.utime(old, (0, 0))

    info = archive_of([Entry("old.dcm", old)]).getinfo("old.dcm")

    assert info.date_time == (1980, 1, 1, 0, 0, 0)


@pytest.mark.parametrize(
    "name",
    ["", "/etc/passwd", "../up", "a/../../up", "a/..", "./a", "a//b", "a/", "a\\b", "C:/x", "a\0b"],
)
def test_unsafe_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Entry(name, tmp_path / "x")


@pytest.mark.parametrize("name", ["a", "a/b/c.dcm", "..a", "a..b", "dr_x/20240101_Brain/T1.nii.gz"])
def test_ordinary_names_are_accepted(name: str, tmp_path: Path) -> None:
    assert Entry(name, tmp_path / "x").name == name

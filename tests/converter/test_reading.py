"""The converter's fast file reader gives what pydicom.dcmread gives, for every test file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from services.converter.engines import _native_pixels
from services.converter.reading import DEFER_SIZE, read_file
from tests.conftest import TESTDATA


def _dicom_files() -> list[Path]:
    files = []
    for path in sorted(TESTDATA.glob("*/dicom/**/*")):
        if not path.is_file():
            continue
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file: not this test's business
            continue
        files.append(path)
    return files


FILES = _dicom_files()


def _same(ours: Dataset, theirs: Dataset) -> None:
    assert ours.preamble == theirs.preamble
    assert ours.file_meta == theirs.file_meta
    assert ours.original_encoding == theirs.original_encoding
    assert ours.original_character_set == theirs.original_character_set
    for mine, reference in zip(ours.iterall(), theirs.iterall(), strict=True):
        assert (mine.tag, mine.VR, mine.is_undefined_length) == (
            reference.tag,
            reference.VR,
            reference.is_undefined_length,
        )
        assert mine.value == reference.value, mine.tag


def test_the_test_data_is_there() -> None:
    assert len(FILES) > 300


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_test_file_reads_as_dcmread_reads_it(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(read_file(path), pydicom.dcmread(path))
        ours = read_file(path)
        if (
            "PixelData" in ours
            and ours.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian
        ):
            reference = pydicom.dcmread(path)
            decoded = _native_pixels(ours)
            if decoded is not None:
                expected = reference.pixel_array
                assert decoded.dtype == expected.dtype
                assert np.array_equal(decoded, expected)


def test_large_values_stay_in_the_file_until_used() -> None:
    path = next(p for p in FILES if p.stat().st_size > 4 * DEFER_SIZE)
    ds = read_file(path)
    raw = ds.get_item("PixelData", keep_deferred=True)
    assert raw.value is None  # deferred
    assert ds.PixelData == pydicom.dcmread(path).PixelData


def test_what_the_fast_path_does_not_take_reads_as_dcmread(tmp_path: Path) -> None:
    source = FILES[0]
    deflated = tmp_path / "deflated.dcm"
    ds = pydicom.dcmread(source)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    bare = tmp_path / "bare.dcm"  # no preamble, no file meta
    pydicom.dcmread(source).save_as(bare, enforce_file_format=False)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    for path in (deflated, bare, truncated):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = read_file(path)
            theirs = pydicom.dcmread(path, force=True)
        assert ours.SOPInstanceUID == theirs.SOPInstanceUID
        assert len(ours) == len(theirs)

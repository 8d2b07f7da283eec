"""A conversion that finds the archive's disk full is the disk's fault, not the series':
the converter retries it instead of failing the series for good."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from services.converter.conversion import Conversion
from services.converter.isolation import Job, run_isolated
from tests.reference import convert_folder
from tests.system import dicom_files, small_filesystem

SERIES = "siemens_xa30_t1w_3d_classic"


def test_a_full_disk_fails_a_conversion_as_out_of_space(testdata: Path, tmp_path: Path) -> None:
    files = tuple(dicom_files(testdata / SERIES))
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    with small_filesystem(tmp_path / "archive", "64k") as archive:
        job = Job(
            files, archive / "nifti", "001_t1", header.StudyInstanceUID, header.SeriesInstanceUID
        )
        result = run_isolated(job, timeout=120)
    assert result.status == "failed", result
    assert result.out_of_space, result.reason


@pytest.mark.parametrize("folder", [SERIES, "siemens_xa30_func_bold"])  # classic; multi-frame
def test_a_full_scratch_disk_fails_a_dcm2niix_conversion_as_out_of_space(
    testdata: Path, tmp_path: Path, folder: str
) -> None:
    """dcm2niix writes into the scratch folder and says only "disk full?" when it cannot (a
    multi-frame series has no other engine to try)."""
    with small_filesystem(tmp_path / "work", "64k") as work:
        result = convert_folder(testdata / folder / "dicom", tmp_path, "001_t1", work_dir=work)
    assert result.status == "failed", result
    assert result.out_of_space, result.reason


def test_other_failures_are_the_series_own() -> None:
    assert not Conversion(status="failed", reason="EngineError: no slices").out_of_space
    assert not Conversion(status="skipped", reason="No space left on device").out_of_space

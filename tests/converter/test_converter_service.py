"""The converter around the engine: a time limit per series, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.converter.conversion import temporary_owner
from services.converter.isolation import Job, _remove_partial_outputs, run_isolated
from tests.system import dicom_files

pytestmark = pytest.mark.integration


def job(testdata: Path, folder: str, out_dir: Path) -> Job:
    files = dicom_files(testdata / folder)
    return Job(tuple(files), out_dir, "001_series", "1.2.3", "1.2.3.4")


def test_a_series_converts_in_a_process_of_its_own(testdata: Path, tmp_path: Path) -> None:
    result = run_isolated(job(testdata, "ge_fmri_epi_4d", tmp_path / "nifti"), timeout=300)
    assert result.status == "converted", result.reason
    assert [o.nifti.name for o in result.outputs] == ["001_series.nii.gz"]
    assert result.outputs[0].nifti.is_file() and result.outputs[0].sidecar.is_file()


def test_a_conversion_out_of_time_fails_the_series_and_leaves_nothing(
    testdata: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "nifti"
    result = run_isolated(job(testdata, "siemens_xa30_t1w_3d_classic", out_dir), timeout=0.05)
    assert result.status == "failed" and "took over" in result.reason
    assert not list(out_dir.glob(".*.tmp"))


def test_only_this_hosts_process_temporary_outputs_are_removed(tmp_path: Path) -> None:
    """Converters on several hosts (or containers, where process ids repeat) may write into
    one study folder: cleaning up after process 4321 here leaves another host's 4321 alone."""
    ours = tmp_path / f".001_series.nii.gz.{temporary_owner(4321)}.0123456789ab.tmp"
    theirs = tmp_path / ".001_series.nii.gz.other-host-4321.0123456789ab.tmp"
    another_process = tmp_path / f".001_series.json.{temporary_owner(14321)}.0123456789ab.tmp"
    for path in ours, theirs, another_process:
        path.write_bytes(b"partial")
    _remove_partial_outputs(tmp_path, 4321)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([theirs.name, another_process.name])

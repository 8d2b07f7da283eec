"""The reference the conversion is held to: `dcm2niix -i y` (PyPI package), run on a copy.

`dcm2niix_reference` converts a folder; `Volume`s read NIfTI files as stored values plus
scl_slope/scl_inter, reoriented to RAS; `same_volume` is the comparison of the issue:
voxels equal (stored values with the same scaling, or the scaled values) and affines equal
within 0.05 mm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dcm2niix
import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from services.converter.conversion import Conversion, convert_series

AFFINE_TOLERANCE_MM = 0.05
_CORRECTED = re.compile(r"^(?P<base>.*?)(_Tilt_Eq|_Tilt|_Eq)_\d+$")


@dataclass(frozen=True)
class SeriesFiles:
    study_instance_uid: str
    series_instance_uid: str
    files: tuple[Path, ...]


def series_in(folder: Path) -> list[SeriesFiles]:
    """The DICOM files under `folder` grouped by SeriesInstanceUID, sorted by UID.

    Files without file meta (an RT structure set here) are read with force, as the archive
    files whatever it receives."""
    found: dict[str, list[Path]] = defaultdict(list)
    studies: dict[str, str] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        uid = str(ds.get("SeriesInstanceUID", ""))
        assert uid, f"{path} has no SeriesInstanceUID"
        found[uid].append(path)
        studies[uid] = str(ds.get("StudyInstanceUID", ""))
    return [SeriesFiles(studies[uid], uid, tuple(found[uid])) for uid in sorted(found)]


def convert_folder(
    folder: Path, out: Path, base_name: str, work_dir: Path | None = None
) -> Conversion:
    """The one series under `folder` converted by dcmdb into `out`/nifti."""
    (series,) = series_in(folder)
    return convert_series(
        series.files,
        out / "nifti",
        base_name,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        work_dir=work_dir or out / "work",
    )


@dataclass(frozen=True)
class ReferenceVolume:
    """One volume dcm2niix wrote, with its corrected copies (_Tilt, _Eq) as alternatives."""

    name: str
    files: tuple[Path, ...]

    @property
    def sidecar(self) -> dict[str, Any]:
        path = self.files[0].with_name(f"{self.name}.json")
        return json.loads(path.read_text()) if path.exists() else {}


def dcm2niix_reference(source: Path, out: Path) -> list[ReferenceVolume]:
    """`dcm2niix -i y -z y` on the DICOM files under `source`, written into `out`."""
    out.mkdir(parents=True)
    command = [dcm2niix.bin, "-i", "y", "-z", "y", "-f", "%s_%d_%e", "-o", str(out), str(source)]
    # Exit codes: 0 converted, 2 found nothing it converts (e.g. only a deflated file).
    subprocess.run(
        command,
        check=False,
        capture_output=True,
        env={**os.environ, "HOME": str(out)},  # no ~/.dcm2nii.ini
        timeout=300,
    )
    stems = sorted(p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz"))
    volumes: dict[str, list[Path]] = defaultdict(list)
    for stem in stems:
        match = _CORRECTED.match(stem)
        base = match.group("base") if match and match.group("base") in stems else stem
        volumes[base].append(out / f"{stem}.nii.gz")
    return [ReferenceVolume(base, tuple(files)) for base, files in sorted(volumes.items())]


def copy_by_series(series: Iterable[SeriesFiles], target: Path) -> dict[str, Path]:
    """Copies of each series' files in a folder of its own under `target`, by series UID.

    dcm2niix never stacks images of different series, so converting each folder on its own
    gives what converting them together gives, and tells which series each output is of
    (dcm2niix's %j is not always the SeriesInstanceUID: Siemens XA gives the series time)."""
    folders = {}
    for index, item in enumerate(series):
        folder = target / f"series{index:03d}"
        folder.mkdir(parents=True)
        for number, path in enumerate(item.files):
            shutil.copy2(path, folder / f"{number:05d}_{path.name}")
        folders[item.series_instance_uid] = folder
    return folders


@dataclass(frozen=True)
class Volume:
    """A NIfTI file as stored values, scaling and affine, reoriented to RAS."""

    path: Path
    stored: np.ndarray
    slope: float
    inter: float
    affine: np.ndarray
    dtype: np.dtype

    @property
    def scaled(self) -> np.ndarray:
        return self.stored.astype(np.float64) * self.slope + self.inter


def load(path: Path) -> Volume:
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    proxy = image.dataobj
    stored = np.asanyarray(proxy.get_unscaled())  # type: ignore[attr-defined]
    slope = float(proxy.slope)  # type: ignore[attr-defined]
    inter = float(proxy.inter)  # type: ignore[attr-defined]
    while stored.ndim > 3 and stored.shape[-1] == 1:
        stored = stored[..., 0]
    orientation = nib.orientations.io_orientation(image.affine)
    canonical = nib.orientations.apply_orientation(stored, orientation)
    affine = image.affine @ nib.orientations.inv_ornt_aff(orientation, stored.shape)
    return Volume(path, canonical, slope, inter, affine, image.get_data_dtype())


def difference(ours: Volume, reference: Volume) -> str | None:
    """Why two volumes differ, or None when they are the same (as the issue defines it)."""
    if ours.stored.shape != reference.stored.shape:
        return f"shape {ours.stored.shape} != {reference.stored.shape}"
    if not np.allclose(ours.affine, reference.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.max(np.abs(ours.affine - reference.affine)))
        return f"affines differ by up to {worst:.3f} mm"
    same_stored = np.array_equal(ours.stored, reference.stored)
    same_scaling = np.isclose(ours.slope, reference.slope, rtol=1e-6, atol=0) and np.isclose(
        ours.inter, reference.inter, rtol=1e-6, atol=1e-6
    )
    if same_stored and same_scaling:
        return None
    if np.allclose(ours.scaled, reference.scaled, rtol=1e-6, atol=1e-6):
        return None
    if same_stored:
        return (
            f"stored values equal but scaling {ours.slope}/{ours.inter} != "
            f"{reference.slope}/{reference.inter}"
        )
    changed = int(np.count_nonzero(~np.isclose(ours.scaled, reference.scaled)))
    return f"{changed} voxels differ"

"""The geometry guard on real series: dcm2niix's volumes pass; the same volumes corrupted on
purpose (slice order flipped under the same affine, origin shifted, mirrored in plane, the
affine's slice axis reversed) fail with a reason; and a conversion whose engine writes such a
volume is never published as converted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from services.converter import conversion
from services.converter.guard import GeometryMismatch, check_volume
from services.converter.instances import read_instances
from services.converter.planes import Plane, frames_left_out, source_planes
from tests.reference import convert_folder, dcm2niix_reference, series_in

pytestmark = pytest.mark.integration

# One of each form: mosaic (coronal, descending; sagittal), classic single-frame (GE fMRI,
# Siemens 3D T1), enhanced multi-frame (Siemens XA fMRI), Philips magnitude and phase.
FOLDERS = [
    "siemens_vb17_mosaic_cordesc35",
    "siemens_vb17_mosaic_sagint35",
    "ge_fmri_epi_4d",
    "siemens_xa30_t1w_3d_classic",
    "siemens_xa10_enhanced_fmri",
    "philips_dual_echo_mag_phase",
]


def _flip_slices(image: nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.asanyarray(image.dataobj)
    return nib.Nifti1Image(data[:, :, ::-1].copy(), image.affine, image.header)


def _shift_origin(mm: float) -> Callable[[nib.Nifti1Image], nib.Nifti1Image]:
    def shift(image: nib.Nifti1Image) -> nib.Nifti1Image:
        affine = image.affine.copy()
        affine[:3, 3] += affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * mm
        return nib.Nifti1Image(np.asanyarray(image.dataobj), affine, image.header)

    return shift


def _shift_one_slice(image: nib.Nifti1Image) -> nib.Nifti1Image:
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, 2]
    return nib.Nifti1Image(np.asanyarray(image.dataobj), affine, image.header)


def _mirror_in_plane(image: nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.asanyarray(image.dataobj)
    return nib.Nifti1Image(data[::-1].copy(), image.affine, image.header)


def _reverse_slice_axis(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The affine says the slices run the other way; the voxels stay (a silent mirror)."""
    affine = image.affine.copy()
    count = image.shape[2]
    affine[:3, 3] += affine[:3, 2] * (count - 1)
    affine[:3, 2] *= -1
    return nib.Nifti1Image(np.asanyarray(image.dataobj), affine, image.header)


CORRUPTIONS: dict[str, Callable[[nib.Nifti1Image], nib.Nifti1Image]] = {
    "slice order flipped": _flip_slices,
    "origin shifted 0.5 mm": _shift_origin(0.5),
    "origin shifted 120 mm": _shift_origin(120.0),
    "origin shifted one slice": _shift_one_slice,
    "mirrored in plane": _mirror_in_plane,
    "slice axis reversed": _reverse_slice_axis,
}


def _reference(testdata: Path, folder: str, out: Path) -> tuple[list[Plane], list[Path]]:
    (series,) = series_in(testdata / folder / "dicom")
    instances, _ = read_instances(series.files)
    planes = source_planes([i for i in instances if i.has_pixels])
    volumes = [f for v in dcm2niix_reference(testdata / folder / "dicom", out) for f in v.files]
    assert volumes
    return planes, volumes


@pytest.mark.parametrize("folder", FOLDERS)
def test_guard_passes_dcm2niix_and_fails_corrupted_volumes(
    testdata: Path, tmp_path: Path, folder: str
) -> None:
    planes, volumes = _reference(testdata, folder, tmp_path / "reference")
    for path in volumes:
        image = nib.load(path)
        assert isinstance(image, nib.Nifti1Image)
        check_volume(image, planes, resampled=False)  # raises on a mismatch
        for name, corrupt in CORRUPTIONS.items():
            with pytest.raises(GeometryMismatch) as failed:
                check_volume(corrupt(image), planes, resampled=False)
            assert str(failed.value), name


def test_a_resampled_volume_with_reversed_slices_fails(testdata: Path, tmp_path: Path) -> None:
    """dcm2niix's tilt-corrected CT passes as resampled; with its slices reversed it fails."""
    planes, volumes = _reference(testdata, "d2n_ct_gantry_tilt", tmp_path / "reference")
    (tilted,) = [p for p in volumes if "_Tilt" in p.name]
    image = nib.load(tilted)
    assert isinstance(image, nib.Nifti1Image)
    check_volume(image, planes, resampled=True)
    with pytest.raises(GeometryMismatch, match="reversed"):
        check_volume(_flip_slices(image), planes, resampled=True)


@pytest.mark.parametrize(
    "folder", ["siemens_vb17_mosaic_cordesc35", "siemens_vb17_mosaic_sagdesc36"]
)
def test_a_wrong_engine_is_never_published(
    testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    """dicom2nifti mirrors coronal mosaics and misplaces sagittal ones. Tried first, its
    volume is caught and dcm2niix's published; as the only engine, the series fails."""
    monkeypatch.setattr(conversion, "engine_order", lambda volume: ("dicom2nifti", "dcm2niix"))
    result = convert_folder(testdata / folder / "dicom", tmp_path / "fallback", "series")
    assert result.status == "converted", result
    assert [o.engine.split()[0] for o in result.outputs] == ["dcm2niix"]
    notes = (tmp_path / "fallback" / "nifti" / "series.json").read_text()
    assert "dicom2nifti: the volume disagrees with the DICOM headers" in notes

    monkeypatch.setattr(conversion, "engine_order", lambda volume: ("dicom2nifti",))
    result = convert_folder(testdata / folder / "dicom", tmp_path / "alone", "series")
    assert result.status == "failed", result
    assert "disagrees with the DICOM headers" in result.reason
    assert result.outputs == ()
    assert not list((tmp_path / "alone" / "nifti").glob("*.nii.gz"))


def test_a_volume_of_an_object_not_read_at_first_is_found_among_every_frame(
    testdata: Path, tmp_path: Path
) -> None:
    """Of a series of multi-frame objects only the first and last are read at first. A
    volume made of another one (an echo of its own, say) matches none of those; read with
    every frame, it passes, and only a wrong volume still fails."""
    folder = "siemens_xa30_func_bold"  # one enhanced object per volume
    (series,) = series_in(testdata / folder / "dicom")
    instances, _ = read_instances(series.files)
    (path,) = [
        f
        for v in dcm2niix_reference(testdata / folder / "dicom", tmp_path / "ref")
        for f in v.files
    ]
    image = nib.load(path)
    assert isinstance(image, nib.Nifti1Image)
    middle = nib.Nifti1Image(np.asanyarray(image.dataobj)[..., 10], image.affine)
    assert frames_left_out(instances)
    with pytest.raises(GeometryMismatch):
        check_volume(middle, source_planes(instances), resampled=False)
    every = source_planes(instances, every_frame=True)
    check_volume(middle, every, resampled=False)
    with pytest.raises(GeometryMismatch):
        check_volume(_flip_slices(middle), every, resampled=False)

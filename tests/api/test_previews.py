"""The series preview: which image is shown, and how its pixels become grey levels."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from services.api.previews import PreviewUnavailable, render_preview
from tests.conftest import TESTDATA


def series(folder: str) -> list[Path]:
    files = sorted(p for p in (TESTDATA / folder / "dicom").rglob("*") if p.is_file())
    assert files, f"no files in {folder}"
    return files


def png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def write_image(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: object
) -> Path:
    """A minimal MR image file with these pixels and attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.set_pixel_data(pixels, photometric, 8 * pixels.dtype.itemsize)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# Real series -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "folder",
    [
        "d2n_ct_gantry_tilt",  # CT
        "siemens_xa30_t1w_3d_classic",  # MR, one file per slice
        "ge_fmri_epi_4d",  # several volumes, file names out of order
        "d2n_mr_4slice_jpeg",  # JPEG lossless
        "d2n_mr_4slice_j2k",
        "siemens_transfer_syntaxes",  # one image in 9 encodings
        "siemens_vb17_mosaic_axasc35",  # mosaic
        "siemens_xa10_enhanced_fmri",  # enhanced multi-frame, several files
        "philips_enhanced_fieldmap",  # enhanced multi-frame, one file
        "d2n_hitachi_mr",  # implicit VR
    ],
)
def test_real_series_give_a_png_of_the_image_size(folder: str) -> None:
    files = series(folder)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)

    pixels = png(render_preview(files))

    assert pixels.shape == (header.Rows, header.Columns)
    assert pixels.dtype == np.uint8
    assert pixels.min() < pixels.max()


def test_the_input_order_does_not_matter() -> None:
    files = series("ge_fmri_epi_4d")
    shuffled = files[:]
    random.Random(7).shuffle(shuffled)

    assert render_preview(shuffled) == render_preview(files)


def test_the_middle_slice_by_position_is_shown() -> None:
    # Instance 4 is missing: the middle of the four slices is the third by position. The
    # pixels of this series are random noise, so the preview tells the files apart.
    files = series("d2n_ct_missing_slice")
    by_position = sorted(files, key=lambda p: _position_along_normal(pydicom.dcmread(p)))

    assert render_preview(files) == render_preview([by_position[2]])
    assert render_preview(files) != render_preview([by_position[1]])


def _position_along_normal(ds: Dataset) -> float:
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot([float(v) for v in ds.ImagePositionPatient], normal))


@pytest.mark.parametrize("number", range(2, 10))
def test_every_encoding_gives_the_explicit_little_endian_preview(number: int) -> None:
    # One image in nine encodings, all lossless: implicit VR, big endian, RLE, JPEG
    # lossless, JPEG-LS and JPEG 2000 must decode to the pixels of 1.dcm.
    folder = TESTDATA / "siemens_transfer_syntaxes" / "dicom"

    assert render_preview([folder / f"{number}.dcm"]) == render_preview([folder / "1.dcm"])


@pytest.mark.parametrize("encoding", ["jpeg", "jpegls", "rle"])
def test_compressed_copies_of_a_series_give_one_preview(encoding: str) -> None:
    # The four compressed d2n_mr_4slice folders hold the same instances; the uncompressed
    # one does not (other UIDs, other pixels), despite what the inventory says.
    expected = render_preview(series("d2n_mr_4slice_j2k"))

    assert render_preview(series(f"d2n_mr_4slice_{encoding}")) == expected


def test_jpeg_extended_image_is_columns_wide_and_rows_high() -> None:
    path = TESTDATA / "pydicom_small_singles" / "dicom" / "JPGExtended.dcm"  # 256 x 1024

    image = Image.open(io.BytesIO(render_preview([path])))

    assert image.size == (256, 1024)


def test_deflated_data_set_is_read() -> None:
    path = TESTDATA / "pydicom_mr_small_transfer_syntax_variants" / "dicom" / "image_dfl.dcm"

    assert png(render_preview([path])).shape == (512, 512)


def test_enhanced_frame_uses_its_own_rescale_and_window() -> None:
    # 64 frames: 32 magnitude, then 32 of the field map in Hz (slope 0.244, intercept -500,
    # window 0/1000); the middle frame, index 32, is the first field map frame.
    path = TESTDATA / "philips_enhanced_fieldmap" / "dicom" / "IM_0027_fMAP.dcm"
    groups = pydicom.dcmread(path, stop_before_pixels=True).PerFrameFunctionalGroupsSequence[32]
    rescale = groups.PixelValueTransformationSequence[0]
    window = groups.FrameVOILUTSequence[0]
    hz = pixel_array(path, index=32) * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)
    center, width = float(window.WindowCenter), float(window.WindowWidth)
    expected = np.clip((hz - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255

    assert np.abs(png(render_preview([path])).astype(float) - expected).max() <= 1


def test_unreadable_files_are_skipped(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    files = [*series("d2n_hitachi_mr"), junk, tmp_path / "gone.dcm"]

    assert render_preview(files) == render_preview(series("d2n_hitachi_mr"))


# Non-image objects -------------------------------------------------------------------------


def test_non_image_objects_have_no_preview() -> None:
    files = [p for p in series("pydicom_nonimage_objects") if p.name != "rtdose.dcm"]

    with pytest.raises(PreviewUnavailable, match="no image with pixel data"):
        render_preview(files)


def test_rt_dose_grid_has_a_preview() -> None:
    path = TESTDATA / "pydicom_nonimage_objects" / "dicom" / "rtdose.dcm"  # 10 x 10, 15 frames

    assert png(render_preview([path])).shape == (10, 10)


def test_image_header_without_pixel_data_has_no_preview(tmp_path: Path) -> None:
    path = write_image(tmp_path / "image.dcm", np.zeros((4, 4), dtype=np.int16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)

    with pytest.raises(PreviewUnavailable):
        render_preview([path])


def test_empty_series_has_no_preview() -> None:
    with pytest.raises(PreviewUnavailable):
        render_preview([])


# Choosing the image, on generated series -----------------------------------------------------


def _grey_series(tmp_path: Path, count: int, **per_file: list[object]) -> list[Path]:
    """`count` 2x2 images, image i all of value 10 * i and shown through a fixed window, so
    that the preview's grey level tells which image was chosen."""
    files = []
    for i in range(count):
        attributes = {key: values[i] for key, values in per_file.items()}
        pixels = np.full((2, 2), 10 * i, dtype=np.int16)
        name = attributes.pop("name", f"{i}.dcm")
        files.append(
            write_image(
                tmp_path / str(name), pixels, WindowCenter=50, WindowWidth=101, **attributes
            )
        )
    return files


def _chosen(files: list[Path]) -> int:
    grey = int(png(render_preview(files))[0, 0])
    return round((grey / 255 * 100 + 49.5 - 50) / 10)  # inverse of the window


def test_images_are_ordered_along_the_slice_normal(tmp_path: Path) -> None:
    # Positions along z make image 3 the middle one; instance numbers and names disagree.
    z = [0.0, 10.0, 20.0, -5.0, 40.0]
    files = _grey_series(
        tmp_path,
        5,
        ImageOrientationPatient=[[1, 0, 0, 0, 1, 0]] * 5,
        ImagePositionPatient=[[3, -2, v] for v in z],
        InstanceNumber=[5, 4, 3, 2, 1],
    )
    # sorted by z: -5 (3), 0 (0), 10 (1), 20 (2), 40 (4) -> the middle is image 1
    assert _chosen(files) == 1


def test_without_positions_instance_numbers_order_the_images(tmp_path: Path) -> None:
    files = _grey_series(tmp_path, 5, InstanceNumber=[3, 1, 5, 2, 4])
    # by instance number: 1 (1), 2 (3), 3 (0), 4 (4), 5 (2) -> the middle is image 0
    assert _chosen(files) == 0


def test_without_positions_or_numbers_file_names_order_the_images(tmp_path: Path) -> None:
    files = _grey_series(tmp_path, 3, name=["b.dcm", "c.dcm", "a.dcm"])
    # by name: a (2), b (0), c (1) -> the middle is image 0
    assert _chosen(files) == 0


def test_mixed_orientations_fall_back_to_instance_numbers(tmp_path: Path) -> None:
    files = _grey_series(
        tmp_path,
        3,
        ImageOrientationPatient=[[1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1]],
        ImagePositionPatient=[[0, 0, 0], [0, 0, 100], [0, 0, 50]],
        InstanceNumber=[2, 3, 1],
    )
    assert _chosen(files) == 0


def test_multi_frame_shows_its_middle_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full((2, 3), 10 * i, dtype=np.int16) for i in range(5)])
    path = write_image(
        tmp_path / "multi.dcm", frames, NumberOfFrames=5, WindowCenter=50, WindowWidth=101
    )

    pixels = png(render_preview([path]))

    assert pixels.shape == (2, 3)
    assert _chosen([path]) == 2


# From pixel values to grey levels ------------------------------------------------------------


RAMP = np.array([[-100, 0, 49, 50], [100, 1000, 25, 75]], dtype=np.int16)


def test_window_maps_below_to_black_and_above_to_white(tmp_path: Path) -> None:
    path = write_image(tmp_path / "w.dcm", RAMP, WindowCenter=50, WindowWidth=100)

    grey = png(render_preview([path]))

    assert grey[0, 0] == 0 and grey[0, 1] == 0  # -100 and 0: at or below 0.5
    assert grey[1, 0] == 255 and grey[1, 1] == 255  # 100 and 1000: above 99.5
    assert grey[0, 2] == 126 and grey[0, 3] == 129  # ((x - 49.5) / 99 + 0.5) * 255
    assert 60 <= grey[1, 2] < grey[0, 2] < grey[1, 3] <= 195


def test_rescale_applies_before_the_window(tmp_path: Path) -> None:
    # stored 0..3 become 100, 300, 500, 700 Hounsfield-like values, windowed at 400/200
    stored = np.array([[0, 1], [2, 3]], dtype=np.int16)
    path = write_image(
        tmp_path / "r.dcm",
        stored,
        RescaleSlope=200,
        RescaleIntercept=100,
        WindowCenter=400,
        WindowWidth=200,
    )

    grey = png(render_preview([path]))

    assert grey[0, 0] == 0 and grey[1, 1] == 255
    assert grey[0, 1] < 128 < grey[1, 0]


def test_first_window_of_several_is_used(tmp_path: Path) -> None:
    path = write_image(tmp_path / "w.dcm", RAMP, WindowCenter=[50, 5000], WindowWidth=[100, 10000])

    assert png(render_preview([path]))[1, 0] == 255


@pytest.mark.parametrize(
    "width",
    [
        0,
        -10,
        pytest.param("nan", marks=pytest.mark.filterwarnings("ignore:Invalid value for VR DS")),
    ],
)
def test_unusable_window_stretches_the_range(tmp_path: Path, width: object) -> None:
    path = write_image(tmp_path / "w.dcm", RAMP, WindowCenter=50, WindowWidth=width)

    grey = png(render_preview([path]))

    assert grey[0, 0] == 0  # the minimum, -100
    assert grey[1, 1] == 255  # the maximum, 1000


def test_without_window_the_range_is_stretched(tmp_path: Path) -> None:
    path = write_image(tmp_path / "s.dcm", np.array([[10, 20], [30, 40]], dtype=np.uint16))

    assert png(render_preview([path])).tolist() == [[0, 85], [170, 255]]


def test_constant_image_is_black_not_an_error(tmp_path: Path) -> None:
    path = write_image(tmp_path / "c.dcm", np.full((3, 3), 7, dtype=np.uint16))

    assert png(render_preview([path])).tolist() == [[0] * 3] * 3


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    plain = write_image(tmp_path / "m2.dcm", RAMP, WindowCenter=50, WindowWidth=100)
    inverted = write_image(
        tmp_path / "m1.dcm", RAMP, "MONOCHROME1", WindowCenter=50, WindowWidth=100
    )

    grey = png(render_preview([inverted]))

    assert (grey == 255 - png(render_preview([plain]))).all()
    assert grey[0, 0] == 255 and grey[1, 1] == 0


def test_rgb_image_is_rendered_in_colour(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 2] = (10, 20, 200)
    path = write_image(tmp_path / "rgb.dcm", rgb, "RGB")

    pixels = png(render_preview([path]))

    assert pixels.shape == (2, 3, 3)
    assert (pixels == rgb).all()


def test_ybr_image_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2] = (200, 30, 30)
    rgb[2:] = (30, 30, 200)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    path = write_image(tmp_path / "ybr.dcm", ybr, "YBR_FULL")

    pixels = png(render_preview([path]))

    assert pixels.shape == (4, 4, 3)
    assert np.abs(pixels.astype(int) - rgb).max() <= 2


def test_file_without_file_meta_is_read(tmp_path: Path) -> None:
    path = write_image(tmp_path / "s.dcm", np.array([[10, 20], [30, 40]], dtype=np.uint16))
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[:4] == b"\x08\x00\x16\x00"  # (0008,0016) first: no preamble or meta

    assert png(render_preview([bare])).tolist() == [[0, 85], [170, 255]]

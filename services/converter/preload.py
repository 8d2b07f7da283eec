"""What the fork server does once, before it forks any conversion.

Every conversion runs in a process forked from the fork server (see `isolation`). Work done
here is done once instead of in every child:

- the conversion code and its libraries are imported;
- a practice conversion of a tiny generated series runs, so the libraries' lazy imports,
  dictionaries and caches (pydicom's, dicom2nifti's, nibabel's, the engine versions) are
  filled before the fork;
- the heap is frozen (`gc.freeze`): the children's garbage collector then leaves the
  inherited objects alone instead of touching, and so copying, every page of them.
"""

from __future__ import annotations

import contextlib
import gc
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from . import engines
from .conversion import convert_series
from .dcm2niix_engine import dcm2niix_version

_SLICES, _SIZE = 3, 8


def _practice_series(folder: Path, modality: str) -> list[Path]:
    """A tiny axial series: enough for the engines to take their usual path (an MR series
    dcm2niix's, another modality's dicom2nifti's)."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for index in range(_SLICES):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID, ds.Modality = frame, modality
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(index)]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = _SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.full((_SIZE, _SIZE), index, "<i2").tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _practice() -> None:
    engines.dicom2nifti_version()
    dcm2niix_version()
    with tempfile.TemporaryDirectory(prefix="dcmdb-preload-") as folder:
        root = Path(folder)
        for modality in ("MR", "CT"):
            convert_series(
                _practice_series(root / modality, modality),
                root / "out",
                modality,
                study_instance_uid="",
                series_instance_uid="",
                work_dir=root / "work",
            )


# Only a head start: should the practice fail, the real conversions report the problem.
with contextlib.suppress(Exception):
    _practice()
gc.freeze()

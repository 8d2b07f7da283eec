"""Small synthetic studies, as a scanner and a PACS hold them: a few 4x4 MR images per
series, with the study date and referring physician a reconciliation test needs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


@dataclass
class SyntheticStudy:
    """A study of `series` (instances per series), dated `days_ago` days before today."""

    days_ago: int
    series: list[int]
    physician: str = "SMITH^JOHN"
    uid: str = field(default_factory=generate_uid)
    series_uids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.series_uids = [generate_uid(prefix=None) for _ in self.series]

    @property
    def date(self) -> dt.date:
        return dt.date.today() - dt.timedelta(days=self.days_ago)

    def write(self, folder: Path, counts: list[int] | None = None) -> list[Path]:
        """The files of the study, `counts` instances of each series (default: all);
        the same UIDs whatever the counts, as a PACS holds a part of the scanner's study."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for number, (series_uid, count) in enumerate(
            zip(self.series_uids, counts or self.series, strict=True), 1
        ):
            for instance in range(1, count + 1):
                path = folder / f"{self.uid[-12:]}-{number}-{instance}.dcm"
                _instance(self, series_uid, number, instance).save_as(
                    path, enforce_file_format=True
                )
                paths.append(path)
        return paths


def _instance(study: SyntheticStudy, series_uid: str, series: int, number: int) -> Dataset:
    ds = Dataset()
    # The SOP instance UID follows from the study, series and number: the scanner's and the
    # PACS's copies of an instance are one instance.
    sop_uid = f"{series_uid}.{number}"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study.uid, series_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "TEST^RECON", "R1", "", "O"
    ds.StudyDate = study.date.strftime("%Y%m%d")
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = study.physician
    ds.AccessionNumber, ds.StudyID = "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", series, number
    ds.SeriesDescription = f"series {series}"
    ds.ImagePositionPatient = [0, 0, number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(range(32))
    return ds

"""Real series filed by the sorter's code and converted by the converter's, with the catalog
rows both leave: the studies whose BIDS sessions the tests of `shared.bids` make."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from services.converter import records
from services.sorter.completion import complete_stable_series, unannounced
from shared.bids.views import BidsViews
from shared.catalog.models import Series
from tests.arrivals import Sorter, arrive, dicom_files, with_new_uids

HOUR = 3_600 * 10**9
_stamps = itertools.count(time.time_ns() - HOUR, 10**6)  # older than any stable age

# One session of a Siemens XA30: BOLD named ReproIn-style, diffusion, a field map of two
# magnitude echoes and their phase difference (one study, one patient).
XA30_SESSION = (
    "siemens_xa30_func_bold",
    "siemens_xa30_dwi_enhanced_pa",
    "siemens_xa30_fieldmap_magnitude",
    "siemens_xa30_fieldmap_phasediff",
)
XA30_T1W = "siemens_xa30_t1w_3d_classic"  # another study: a T1w named anat-T1w_acq-tfl


@dataclass
class FiledSessions:
    sorter: Sorter
    testdata: Path

    @property
    def archive(self) -> Path:
        return self.sorter.archive

    def views(self, dates: str = "shift", bids_dir: Path | None = None) -> BidsViews:
        return BidsViews(self.sorter.sessions, self.archive, bids_dir, dates)  # type: ignore[arg-type]

    def file(self, *folders: str, **tags: object) -> str:
        """The folders' instances filed (with `tags` set on each), completed and converted;
        the study's UID."""
        files = dicom_files(self.testdata, *folders)
        arrivals = [
            arrive(with_new_uids(path, **tags), self.sorter.data, stamp=next(_stamps))
            for path in files
        ]
        self.sorter.filer.file_batch(arrivals)
        complete_stable_series(self.sorter.sessions, stable_age=60)
        study = arrivals[0].study_instance_uid
        self.convert(study)
        return study

    def convert(self, study_uid: str) -> None:
        """Every series of the study converted (again), as the converter does it."""
        for event in unannounced(self.sorter.sessions):
            if event.study_instance_uid != study_uid:
                continue
            with self.sorter.sessions.begin() as session:  # a conversion asked for again
                row = session.scalar(
                    select(Series).where(Series.series_instance_uid == event.series_instance_uid)
                )
                assert row is not None
                row.converted_generation = None
            job = records.job_for(self.sorter.sessions, self.archive, event)
            assert job is not None, event
            result = job.convert(self.sorter.data / "work")
            assert records.record(self.sorter.sessions, self.archive, event, result)

"""Whole studies filed into a sorter's archive and catalog, for the tests of retention.

Each study is a small real series under new UIDs, filed by the sorter's own code, completed,
and given the NIfTI output a conversion leaves.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.retention.settings import RetentionSettings
from services.sorter.completion import complete_stable_series
from shared.catalog.models import Eviction, Instance, NiftiOutput, Patient, Series, Study
from shared.catalog.states import ConversionState
from shared.retention import Candidate, candidates, study_sizes
from tests.arrivals import Sorter, arrive, dicom_files, with_new_uids

SERIES = "d2n_hitachi_mr"  # 4 small MR slices: a study made of it is about 84 KB
DAY = 86_400 * 10**9
# Reception times a day ago, a millisecond apart: older than any stable age.
_stamps = itertools.count(time.time_ns() - DAY, 10**6)


@dataclass
class Archive:
    """The sorter's archive and catalog, and how to put whole studies into them."""

    sorter: Sorter
    testdata: Path
    url: str

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.sorter.sessions

    def study(self, *, stamp: int | None = None, convert: bool = True, **tags: object) -> str:
        """A new study (the small series under new UIDs) filed, complete and converted."""
        study, series = generate_uid(), generate_uid()
        self.sorter.filer.file_batch(
            [
                arrive(
                    with_new_uids(path, study=study, series=series, **tags),
                    self.sorter.data,
                    stamp=stamp or next(_stamps),
                )
                for path in dicom_files(self.testdata, SERIES)
            ]
        )
        if convert:
            complete_stable_series(self.sessions, stable_age=60)
            self.convert(series)
        return study

    def convert(self, series_uid: str) -> None:
        """What the converter leaves: a NIfTI volume and sidecar in the study's nifti/."""
        with self.sessions.begin() as session:
            series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
            assert series is not None
            base = f"{series.study.relative_folder}/nifti/{series.folder}"
            for suffix, content in ((".nii.gz", b"\x1f\x8b" + b"\0" * 5000), (".json", b"{}")):
                path = self.sorter.archive / f"{base}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            series.outputs.append(
                NiftiOutput(
                    path=f"{base}.nii.gz",
                    sidecar_path=f"{base}.json",
                    engine="test",
                    size=5002,
                    created_at=datetime.now(UTC),
                )
            )
            series.conversion = ConversionState.CONVERTED
            series.converted_generation = series.generation

    def pk(self, study_uid: str) -> int:
        with self.sessions() as session:
            found = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
            assert found is not None
            return found

    def candidate(self, study_uid: str) -> Candidate:
        """The study as a plan lists it."""
        with self.sessions() as session:
            listed = candidates(session, datetime.now(UTC), 60)
            return next(c for c in listed if c.study_uid == study_uid)

    def size(self, study_uid: str) -> int:
        pk = self.pk(study_uid)
        with self.sessions() as session:
            return study_sizes(session, [pk])[pk]

    def folder(self, study_uid: str) -> Path:
        with self.sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            assert study is not None
            return self.sorter.archive / study.relative_folder

    def rows(self) -> dict[str, int]:
        with self.sessions() as session:
            return {
                table.__tablename__: session.scalar(select(func.count()).select_from(table)) or 0
                for table in (Study, Series, Instance, NiftiOutput, Patient)
            }

    def present(self) -> set[str]:
        with self.sessions() as session:
            return set(session.scalars(select(Study.study_instance_uid)))

    def whole(self, study_uid: str) -> bool:
        """Every file the catalog lists for the study is on disk."""
        with self.sessions() as session:
            instances, outputs = (
                list(
                    session.scalars(
                        select(path)
                        .join(Series, Series.id == series_pk)
                        .join(Study, Study.id == Series.study_pk)
                        .where(Study.study_instance_uid == study_uid)
                    )
                )
                for path, series_pk in (
                    (Instance.path, Instance.series_pk),
                    (NiftiOutput.path, NiftiOutput.series_pk),
                )
            )
        files = instances + outputs
        return bool(instances) and all((self.sorter.archive / p).is_file() for p in files)

    def evictions(self) -> list[Eviction]:
        with self.sessions() as session:
            return list(session.scalars(select(Eviction).order_by(Eviction.id)))

    def late_instance(self, study_uid: str) -> None:
        """One more instance of the study, in a new series."""
        late = with_new_uids(dicom_files(self.testdata, SERIES)[0], study=study_uid)
        self.sorter.filer.file_batch([arrive(late, self.sorter.data, stamp=next(_stamps))])

    def settings(self, **values: object) -> RetentionSettings:
        return RetentionSettings(
            data_dir=self.sorter.data,
            database_url=self.url,
            **values,  # type: ignore[arg-type]
        )

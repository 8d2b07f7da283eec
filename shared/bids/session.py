"""One study's BIDS session, planned from the catalog: which file goes where, with which
sidecar, and which series are left over (and why).

Each converted series is named on its own (`naming`); here the session is made whole:
series that would share a name get runs in the order of their series numbers, phase
difference maps get their echo times, and field maps say which images they correct where
the session has one set of them. Nothing here touches the dataset: `dataset` writes the plan.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import nibabel as nib

from shared.bids.entities import BidsName
from shared.bids.naming import name_series
from shared.bids.rules import Rules
from shared.bids.series import ConvertedOutput, ConvertedSeries
from shared.catalog.models import NiftiOutput, Series, Study
from shared.catalog.states import ConversionState

DatePolicy = Literal["shift", "remove", "keep"]

# An absolute path in a reason (an exception's message): the archive's study folders are
# named after the patient, which the dataset never says.
_PATH = re.compile(r"(?<![\w.])/[^\s'\"]+")

# Not in a BIDS sidecar: the source's UIDs (they lead back to the patient's record), and any
# date (scans.tsv has the acquisition's, as the date policy says).
_PRIVATE_KEYS = frozenset(
    {
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "AcquisitionDateTime",
        "AcquisitionDate",
        "ContentDate",
        "SeriesDate",
        "StudyDate",
    }
)
_TARGETS = {("func", "bold"), ("func", "sbref"), ("dwi", "dwi"), ("perf", "asl")}


@dataclass(frozen=True)
class PlannedFile:
    name: BidsName
    nifti: str  # relative to the archive root
    sidecar: dict[str, Any]  # as it goes into the dataset
    bval: str | None = None
    bvec: str | None = None
    series_number: int | None = None


@dataclass(frozen=True)
class Leftover:
    series_number: int | None
    description: str
    reason: str


@dataclass
class SessionPlan:
    subject: str
    session: str
    files: list[PlannedFile] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    acquired: dict[str, str] = field(default_factory=dict)  # file (in the session) -> acq_time


def plan_session(
    study: Study,
    archive: Path,
    rules: Rules,
    *,
    subject: str,
    session: str,
    dates: DatePolicy,
    shift_days: int,
) -> SessionPlan:
    plan = SessionPlan(subject, session)
    named: list[PlannedFile] = []
    for series in sorted(study.series, key=_series_order):
        named += _name(series, archive, rules, plan.leftovers)
    for file in _with_runs(named, plan.leftovers):
        if _has_echo_times(file, named, plan.leftovers):
            plan.files.append(file)
    _link_field_maps(plan)
    for file in plan.files:
        task = file.name.entity("task")
        if task is not None:
            file.sidecar["TaskName"] = task  # BIDS wants it in a task's sidecar too
        _private(file.sidecar, dates)
        stamp = _acquired(study.study_date, file.sidecar, dates, shift_days)
        if stamp:
            plan.acquired[f"{file.name.datatype}/{file.name.stem(subject, session)}.nii.gz"] = stamp
    return plan


def _series_order(series: Series) -> tuple[int, str]:
    return (series.series_number if series.series_number is not None else 1 << 30, series.folder)


def _name(
    series: Series, archive: Path, rules: Rules, leftovers: list[Leftover]
) -> list[PlannedFile]:
    def left(reason: str) -> list[PlannedFile]:
        said = _PATH.sub("<a file>", reason)
        leftovers.append(Leftover(series.series_number, series.description, said))
        return []

    if series.conversion != ConversionState.CONVERTED:
        why = series.conversion_reason or "not converted yet"
        return left(f"{series.conversion.value}: {why}")
    outputs = sorted(series.outputs, key=lambda o: o.path)
    try:
        converted = _converted(series, outputs, archive)
    except (OSError, ValueError) as exc:
        return left(f"its NIfTI or sidecar does not read: {exc}")
    naming = name_series(converted, rules)
    if naming.names is None:
        return left(naming.how)
    return [
        PlannedFile(name, o.path, dict(c.sidecar), o.bval_path, o.bvec_path, series.series_number)
        for name, o, c in zip(naming.names, outputs, converted.outputs, strict=True)
    ]


def _converted(series: Series, outputs: Sequence[NiftiOutput], archive: Path) -> ConvertedSeries:
    found = []
    for output in outputs:
        sidecar = json.loads((archive / output.sidecar_path).read_bytes())
        with gzip.open(archive / output.path) as image:  # its header only
            shape = nib.Nifti1Header.from_fileobj(image).get_data_shape()
        volumes = int(shape[3]) if len(shape) > 3 else 1
        found.append(ConvertedOutput(output.path, sidecar, volumes, output.bval_path is not None))
    first = found[0].sidecar if found else {}
    return ConvertedSeries(
        series_number=series.series_number,
        description=series.description or str(first.get("SeriesDescription") or ""),
        protocol=str(first.get("ProtocolName") or ""),
        modality=series.modality,
        outputs=tuple(found),
    )


def _with_runs(files: list[PlannedFile], leftovers: list[Leftover]) -> Iterable[PlannedFile]:
    """Files that would share a name get runs by series number; where a name says its run
    already, a second file of that name is left over."""
    by_name: dict[BidsName, list[PlannedFile]] = defaultdict(list)
    for file in files:
        by_name[file.name].append(file)
    for name, same in by_name.items():
        if len(same) == 1:
            yield same[0]
        elif name.entity("run") is None:
            for run, file in enumerate(same, start=1):
                yield _renamed(file, name.with_entity("run", str(run)))
        else:
            yield same[0]
            for file in same[1:]:
                leftovers.append(
                    Leftover(
                        file.series_number,
                        str(file.sidecar.get("SeriesDescription", "")),
                        f"the same BIDS name as series {same[0].series_number}: "
                        f"{name.stem('X', 'Y')}; tell them apart in the rules file",
                    )
                )


def _renamed(file: PlannedFile, name: BidsName) -> PlannedFile:
    return PlannedFile(name, file.nifti, file.sidecar, file.bval, file.bvec, file.series_number)


def _has_echo_times(
    file: PlannedFile, files: Sequence[PlannedFile], leftovers: list[Leftover]
) -> bool:
    """A phase difference map needs both echo times: its own sidecar's (dcm2niix has them
    for Siemens), else the magnitude images' of the series just before it."""
    if file.name.suffix != "phasediff" or {"EchoTime1", "EchoTime2"} <= file.sidecar.keys():
        return True
    earlier = [
        f
        for f in files
        if f.name.datatype == "fmap"
        and f.name.suffix in ("magnitude1", "magnitude2")
        and (f.series_number or 0) <= (file.series_number or 0)
    ]
    times = {f.name.suffix: f.sidecar.get("EchoTime") for f in earlier}
    if isinstance(times.get("magnitude1"), float) and isinstance(times.get("magnitude2"), float):
        file.sidecar["EchoTime1"], file.sidecar["EchoTime2"] = (
            times["magnitude1"],
            times["magnitude2"],
        )
        return True
    leftovers.append(
        Leftover(
            file.series_number,
            str(file.sidecar.get("SeriesDescription", "")),
            "a phase difference map without both echo times (EchoTime1, EchoTime2): no "
            "magnitude images of two echoes before it",
        )
    )
    return False


def _link_field_maps(plan: SessionPlan) -> None:
    """With one set of field maps in the session (one run, one acquisition), they correct
    every BOLD, diffusion and ASL image of it: IntendedFor and B0FieldIdentifier/Source.
    With more than one, which corrects which is the lab's to say."""
    maps = [f for f in plan.files if f.name.datatype == "fmap"]
    targets = [f for f in plan.files if (f.name.datatype, f.name.suffix) in _TARGETS]
    sets = {(f.name.entity("run"), f.name.entity("acq")) for f in maps}
    if len(sets) != 1 or not targets:
        return
    identifier = f"dcmdbsub{plan.subject}ses{plan.session}"
    intended = [
        f"ses-{plan.session}/{t.name.datatype}/{t.name.stem(plan.subject, plan.session)}.nii.gz"
        for t in targets
    ]
    for fmap in maps:
        fmap.sidecar["IntendedFor"] = intended
        fmap.sidecar["B0FieldIdentifier"] = identifier
    for target in targets:
        target.sidecar["B0FieldSource"] = identifier


def _private(sidecar: dict[str, Any], dates: DatePolicy) -> None:
    for key in _PRIVATE_KEYS & sidecar.keys():
        del sidecar[key]
    if dates == "remove":
        sidecar.pop("AcquisitionTime", None)


def _acquired(study_date: str, sidecar: dict[str, Any], dates: DatePolicy, shift: int) -> str:
    """The scan's acq_time for scans.tsv (YYYY-MM-DDThh:mm:ss), shifted or not; "" if none."""
    time = sidecar.get("AcquisitionTime")
    if dates == "remove" or len(study_date) != 8 or not isinstance(time, str):
        return ""
    try:
        day = date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:]))
    except ValueError:
        return ""
    if dates == "shift":
        day += timedelta(days=shift)
    return f"{day.isoformat()}T{time.split('.')[0]}"

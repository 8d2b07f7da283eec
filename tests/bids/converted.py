"""Real series of the test data converted by dcmdb's converter, as the naming gets them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import nibabel as nib

from services.converter.conversion import convert_series
from shared.bids.naming import name_series
from shared.bids.rules import Rules
from shared.bids.series import ConvertedOutput, ConvertedSeries
from tests.conftest import TESTDATA
from tests.reference import series_in

# A folder of the test data, converted (the `converted` fixture).
Converted = Callable[[str], ConvertedSeries]


def convert(folder: str, out: Path) -> ConvertedSeries:
    """The one series of `folder` converted into `out`, with each output's sidecar read and
    its volume count taken from the NIfTI header."""
    (series,) = series_in(TESTDATA / folder / "dicom")
    conversion = convert_series(
        series.files,
        out / "nifti",
        "series",
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        work_dir=out / "work",
    )
    outputs = []
    for output in conversion.outputs:
        shape = nib.load(output.nifti).shape
        outputs.append(
            ConvertedOutput(
                nifti=str(output.nifti.relative_to(out)),
                sidecar=json.loads(output.sidecar.read_text()),
                volumes=shape[3] if len(shape) > 3 else 1,
                diffusion=output.bval is not None,
            )
        )
    first = outputs[0].sidecar if outputs else {}
    return ConvertedSeries(
        series_number=first.get("SeriesNumber"),
        description=first.get("SeriesDescription", ""),
        protocol=first.get("ProtocolName", ""),
        modality=first.get("Modality", ""),
        outputs=tuple(outputs),
    )


def renamed(series: ConvertedSeries, name: str) -> ConvertedSeries:
    """The series as if its protocol had been called `name` at the console (both the
    catalog's fields and the sidecars say so)."""
    outputs = tuple(
        replace(o, sidecar={**o.sidecar, "SeriesDescription": name, "ProtocolName": name})
        for o in series.outputs
    )
    return replace(series, description=name, protocol=name, outputs=outputs)


def named(series: ConvertedSeries, rules: Rules | None = None) -> list[str]:
    """The names `series` gets, as `<datatype>/<stem>` of subject S, session T."""
    naming = name_series(series, rules or Rules())
    assert naming.names is not None, naming.how
    return [f"{n.datatype}/{n.stem('S', 'T')}" for n in naming.names]

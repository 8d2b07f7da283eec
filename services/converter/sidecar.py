"""The JSON sidecar written beside each NIfTI file.

BIDS key names where BIDS has one (times in seconds), no patient details, the source
study and series UIDs, and which converter (and version) made the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydicom.dataset import Dataset

from .grouping import stated_component
from .instances import Instance, as_float, as_int, as_list, as_text, find_attribute


def _seconds(value: Any) -> float | None:
    number = as_float(value)
    # Zero (or less) stands for "not applicable" in these attributes, as dcm2niix reads them.
    return round(number / 1000.0, 9) if number is not None and number > 0 else None


def _number(value: Any) -> float | int | None:
    number = as_float(value)
    if number is None:
        return None
    return int(number) if number.is_integer() else number


def _integer(value: Any) -> int | None:
    return as_int(value)


def _text(value: Any) -> str | None:
    return as_text(value) or None


def _texts(value: Any) -> list[str] | None:
    return [as_text(v) for v in as_list(value)] or None


def _numbers(value: Any) -> list[float | int] | None:
    numbers = [_number(v) for v in as_list(value)]
    return [n for n in numbers if n is not None] or None


# BIDS key, DICOM keyword, conversion. Order is the order in the file.
_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("Modality", "Modality", _text),
    ("Manufacturer", "Manufacturer", _text),
    ("ManufacturersModelName", "ManufacturerModelName", _text),
    ("SoftwareVersions", "SoftwareVersions", _text),
    ("StationName", "StationName", _text),
    ("InstitutionName", "InstitutionName", _text),
    ("MagneticFieldStrength", "MagneticFieldStrength", _number),
    ("ImagingFrequency", "ImagingFrequency", _number),
    ("BodyPart", "BodyPartExamined", _text),
    ("PatientPosition", "PatientPosition", _text),
    ("SeriesDescription", "SeriesDescription", _text),
    ("ProtocolName", "ProtocolName", _text),
    ("SeriesNumber", "SeriesNumber", _integer),
    ("AcquisitionNumber", "AcquisitionNumber", _integer),
    ("ImageType", "ImageType", _texts),
    ("ScanningSequence", "ScanningSequence", _text),
    ("SequenceVariant", "SequenceVariant", _text),
    ("ScanOptions", "ScanOptions", _text),
    ("SequenceName", "SequenceName", _text),
    ("MRAcquisitionType", "MRAcquisitionType", _text),
    ("EchoNumber", "EchoNumbers", _integer),
    ("EchoTime", "EchoTime", _seconds),
    ("RepetitionTime", "RepetitionTime", _seconds),
    ("InversionTime", "InversionTime", _seconds),
    ("FlipAngle", "FlipAngle", _number),
    ("EchoTrainLength", "EchoTrainLength", _integer),
    ("SliceThickness", "SliceThickness", _number),
    ("SpacingBetweenSlices", "SpacingBetweenSlices", _number),
    ("PixelSpacing", "PixelSpacing", _numbers),
    ("PixelBandwidth", "PixelBandwidth", _number),
    ("PercentPhaseFOV", "PercentPhaseFieldOfView", _number),
    ("PercentSampling", "PercentSampling", _number),
    ("ReceiveCoilName", "ReceiveCoilName", _text),
    ("KVP", "KVP", _number),
    ("XRayTubeCurrent", "XRayTubeCurrent", _number),
    ("ConvolutionKernel", "ConvolutionKernel", _text),
    ("DoseUnits", "DoseUnits", _text),
    ("DoseType", "DoseType", _text),
    ("DoseGridScaling", "DoseGridScaling", _number),
    ("ImageOrientationPatientDICOM", "ImageOrientationPatient", _numbers),
)

# Taken from dcm2niix's own sidecar for a volume dcm2niix made: it knows them per output
# (one enhanced object may give several echoes) and reads the vendors' private headers for
# the keys distortion and slice-timing correction need, which refer to its voxel axes.
DCM2NIIX_KEYS = frozenset(
    {
        "EchoNumber",
        "EchoTime",
        "RepetitionTime",
        "InversionTime",
        "FlipAngle",
        "MagneticFieldStrength",
        "ImageType",
        "AcquisitionTime",
        "SliceThickness",
        "SpacingBetweenSlices",
        "ImageOrientationPatientDICOM",
        "PhaseEncodingDirection",
        "TotalReadoutTime",
        "EffectiveEchoSpacing",
        "SliceTiming",
    }
)
# Not taken from an engine's sidecar: patient details, and dcm2niix's guess of a BIDS name.
_IGNORED_KEYS = frozenset(
    {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "BidsGuess"}
)


def build_sidecar(
    instances: Sequence[Instance],
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    software: str,
    software_version: str,
    notes: Iterable[str] = (),
    engine_metadata: dict[str, Any] | None = None,
    engine_overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """The sidecar of one output made from `instances` (sorted) by `software`."""
    first = instances[0].ds
    image_type = dcm2niix_image_type(instances[0])
    engine = {
        key: value
        for key, value in (engine_metadata or {}).items()
        if key not in _IGNORED_KEYS and not key.startswith("Conversion")
    }
    overridden = set(engine_overrides) & set(engine)
    sidecar: dict[str, Any] = {}
    for key, keyword, convert in _FIELDS:
        if key in overridden:
            sidecar[key] = engine[key]
            continue
        value = image_type if key == "ImageType" else convert(find_attribute(first, keyword))
        if value is not None:
            sidecar[key] = value
    # The engine's, where it has one (set below): reading every image's per-frame headers
    # costs more than the conversion of a series of multi-frame objects.
    if "AcquisitionTime" not in overridden:
        acquisition = acquisition_time(instances)
        if acquisition is not None:
            sidecar["AcquisitionTime"] = acquisition
    for key, value in engine.items():
        if key not in sidecar or key in overridden:
            sidecar[key] = value
    sidecar["StudyInstanceUID"] = study_instance_uid
    sidecar["SeriesInstanceUID"] = series_instance_uid
    sidecar["SourceInstanceCount"] = len(instances)
    sidecar["ConversionSoftware"] = software
    sidecar["ConversionSoftwareVersion"] = software_version
    kept_notes = list(dict.fromkeys(notes))
    if "DoseGridScaling" in sidecar:
        kept_notes.append(
            "voxels are stored dose values: multiply by DoseGridScaling for DoseUnits"
        )
    if kept_notes:
        sidecar["ConversionNotes"] = kept_notes
    return sidecar


def dcm2niix_image_type(instance: Instance) -> list[str] | None:
    """ImageType as dcm2niix writes it: values split at `_`, then the complex component
    (MAGNITUDE, PHASE, REAL, IMAGINARY) where an attribute states it."""
    values = [part for value in instance.image_type for part in value.split("_") if part]
    stated = stated_component(instance)
    if stated is not None and stated.upper() not in values:
        values.append(stated.upper())
    return values or None


def acquisition_time(instances: Sequence[Instance]) -> str | None:
    """The earliest AcquisitionTime (else ContentTime) of the images, as hh:mm:ss.ffffff."""
    times = [t for t in (_bids_time(_time_of(i.ds)) for i in instances) if t is not None]
    return min(times) if times else None


def _time_of(ds: Dataset) -> Any:
    for keyword in ("AcquisitionTime", "ContentTime"):
        value = find_attribute(ds, keyword)
        if value:
            return value
    value = find_attribute(ds, "AcquisitionDateTime") or find_attribute(
        ds, "FrameAcquisitionDateTime"
    )
    text = as_text(value)
    return text[8:] if len(text) > 8 else None


def _bids_time(value: Any) -> str | None:
    text = as_text(value).replace(":", "")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    fraction = fraction.split("+")[0].split("-")[0]  # no UTC offset in a BIDS time
    if not whole.isdigit() or not (2 <= len(whole) <= 6) or (fraction and not fraction.isdigit()):
        return None
    whole = whole.ljust(6, "0")
    return f"{whole[0:2]}:{whole[2:4]}:{whole[4:6]}.{fraction[:6].ljust(6, '0')}"


def dumps(sidecar: dict[str, Any]) -> bytes:
    return (json.dumps(sidecar, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()

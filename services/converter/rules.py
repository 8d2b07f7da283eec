"""What is not converted, and why, decided from DICOM attributes alone.

The rules mirror `dcm2niix -i y` ("ignore derived, localizer and 2D images") and add the
objects dcm2niix has no business with: objects without pixel data (structured reports,
RT plans and structure sets, waveforms, ...) and secondary captures (screenshots, scanned
documents, post-processing output).
"""

from __future__ import annotations

from collections.abc import Sequence

from .instances import Instance, as_int, as_text, private_value

SECONDARY_CAPTURE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    }
)

# ImageType values that name a localizer (scout, topogram, CT projection radiograph).
_LOCALIZER_TYPES = frozenset({"LOCALIZER", "SCOUT", "TOPOGRAM"})
# Siemens 2D FLASH localizer sequences, which dcm2niix -i y ignores by name.
_LOCALIZER_SEQUENCES = frozenset({"*fl2d1", "_fl2d1"})
# GE "Series plane" (0019,xx17, GEMS_ACQU_01): 256 is a 3-plane localizer.
_GE_THREE_PLANE = 256
_BACKSLASH = "\\"


def non_image_reason(instances: Sequence[Instance]) -> str:
    names = sorted({instance.sop_class_name() for instance in instances})
    return f"non-image object ({', '.join(names)}): no pixel data"


def instance_skip_reason(instance: Instance) -> str | None:
    """Why this image is not converted, or None when it may be."""
    if instance.sop_class_uid in SECONDARY_CAPTURE_CLASSES:
        return "secondary capture"
    image_type = instance.image_type
    if image_type and image_type[0] == "DERIVED":
        return f"derived image (ImageType {_BACKSLASH.join(image_type)})"
    localizer = localizer_reason(instance)
    if localizer is not None:
        return localizer
    return None


def localizer_reason(instance: Instance) -> str | None:
    ds = instance.ds
    image_type = instance.image_type
    named = _LOCALIZER_TYPES.intersection(image_type)
    if named:
        return f"localizer (ImageType {sorted(named)[0]})"
    if "PROJECTION IMAGE" in image_type and as_text(ds.get("Modality")) == "CT":
        return "localizer (CT projection image)"
    if as_int(private_value(ds, 0x0019, "GEMS_ACQU_01", 0x17)) == _GE_THREE_PLANE:
        return "localizer (GE 3-plane localizer)"
    sequence = as_text(ds.get("SequenceName"))
    if sequence in _LOCALIZER_SEQUENCES:
        return f"localizer (Siemens sequence {sequence})"
    return None


def single_slice_reason(instances: Sequence[Instance]) -> str | None:
    """A volume of one 2D image: one single-frame instance that is not a mosaic."""
    if len(instances) == 1 and instances[0].frames == 1 and not instances[0].is_mosaic:
        return "single slice (2D image)"
    return None

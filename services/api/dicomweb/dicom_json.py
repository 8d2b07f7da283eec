"""The DICOM JSON model (PS3.18 F.2): ``{"0020000D": {"vr": "UI", "Value": [...]}}``.

Attributes the catalog holds are written here from their values (a few hundred a search, where
building pydicom data sets would cost more than the query); what is read from files goes
through pydicom's own `DataElement.to_json_dict`, with binary values larger than
`BULK_THRESHOLD` replaced by a BulkDataURI the bulk data route serves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.uid import UID
from pydicom.valuerep import BYTES_VR

log = logging.getLogger("dcmdb.api")

BULK_THRESHOLD = 1024  # bytes of a binary value sent inline (base64) at most
PIXEL_DATA = "7FE00010"
UTF8 = "ISO_IR 192"  # JSON is UTF-8 whatever the file's character set
_INTEGER_VRS = {"IS", "US", "UL", "SS", "SL", "SV", "UV"}
_DECIMAL_VRS = {"DS", "FL", "FD"}
_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def element(vr: str, values: Iterable[Any]) -> dict[str, Any]:
    """One attribute of `values` (None and "" left out; none left: no Value)."""
    kept = [value for value in values if value is not None and value != ""]
    if not kept:
        return {"vr": vr}
    if vr in _TEXT_VRS:
        return {"vr": vr, "Value": kept}
    if vr == "PN":
        kept = [person_name(str(value)) for value in kept]
    elif vr in _INTEGER_VRS:
        kept = [int(value) for value in kept]
    elif vr in _DECIMAL_VRS:
        kept = [float(value) for value in kept]
    return {"vr": vr, "Value": kept}


def person_name(text: str) -> dict[str, str]:
    """A PN value: its alphabetic, ideographic and phonetic groups (``=`` separated)."""
    return {
        group: value for group, value in zip(_NAME_GROUPS, text.split("="), strict=False) if value
    }


def elements_json(
    ds: Dataset, bulk_uri: Callable[[str], str] | None = None, keywords: Iterable[str] = ()
) -> dict[str, Any]:
    """The top-level elements of `ds` (only `keywords`, when given) in DICOM JSON.

    A binary value over `BULK_THRESHOLD` becomes a BulkDataURI (`bulk_uri` of its tag) at the
    top level, inline within sequences; an element pydicom cannot encode is sent without
    its value rather than failing the whole answer.
    """
    correct_ambiguous_vr(ds, is_little_endian=True)
    wanted = list(keywords)
    found: dict[str, Any] = {}
    elements = (ds[k] for k in wanted if k in ds) if wanted else iter(ds)
    for elem in elements:
        tag = f"{elem.tag:08X}"
        if bulk_uri is not None and _is_bulk(elem):
            found[tag] = {"vr": elem.VR, "BulkDataURI": bulk_uri(tag)}
            continue
        try:
            found[tag] = elem.to_json_dict(None, BULK_THRESHOLD)
        except Exception as exc:  # noqa: BLE001 - whatever pydicom makes of a bad value
            log.debug("dicomweb: element %s sent without its value (%s)", tag, exc)
            found[tag] = {"vr": elem.VR}
    if "00080005" in found:
        found["00080005"] = element("CS", [UTF8])
    return found


def _is_bulk(elem: DataElement) -> bool:
    return elem.VR in BYTES_VR and not elem.is_empty and len(elem.value) > BULK_THRESHOLD


def instance_metadata(path: Path, stored_syntax: str, instance_uri: str) -> dict[str, Any]:
    """The metadata of an instance file: every element but the pixel data, which is a
    BulkDataURI, and the transfer syntax it is stored in (AvailableTransferSyntaxUID)."""
    ds = dcmread(path, stop_before_pixels=True)
    found = elements_json(ds, lambda tag: f"{instance_uri}/bulk/{tag}")
    if "Rows" in ds and "Columns" in ds:  # the Image Pixel module: there is pixel data
        wide = int(ds.get("BitsAllocated") or 8) > 8 and not UID(stored_syntax).is_encapsulated
        found[PIXEL_DATA] = {
            "vr": "OW" if wide else "OB",
            "BulkDataURI": f"{instance_uri}/bulk/{PIXEL_DATA}",
        }
    found["00083002"] = element("UI", [stored_syntax])
    return dict(sorted(found.items()))

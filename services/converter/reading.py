"""Reading a DICOM file into a pydicom data set, several times faster than `dcmread`.

`dcmread` parses every element and every undefined-length sequence as it reads, one small
read at a time; a long series of vendor headers (hundreds of private elements, several
sequences per file) costs more to read than to convert. Here the file is read in one go,
`shared.headers` walks it (checking it whole), and the data set is made of pydicom's own
raw elements, which pydicom decodes (sequences included) only when an element is used.
Values over `DEFER_SIZE` are left in the file and read when used, as `dcmread` does with
`defer_size`.

Anything this path does not handle the way `dcmread` would (no DICM prefix, deflated data
sets, unknown VRs, undefined lengths other than sequences and encapsulated pixel data, a
data set that does not walk) is read by `dcmread` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR

from shared.errors import UnreadableObject
from shared.headers import ElementPlace, element_places, meta_places

DEFER_SIZE = 16 * 1024
_ENCODINGS: dict[str, tuple[bool, bool]] = {  # transfer syntax: (implicit VR, little endian)
    ImplicitVRLittleEndian: (True, True),
    ExplicitVRLittleEndian: (False, True),
    ExplicitVRBigEndian: (False, False),
}
_KNOWN_VRS = {vr.value.encode(): vr.value for vr in VR if len(vr.value) == 2}
_CHARSET, _PIXEL_DATA, _UNDEFINED = 0x00080005, 0x7FE00010, 0xFFFFFFFF


class _Unhandled(Exception):
    """Something `dcmread` handles in its own way."""


def read_file(path: Path) -> FileDataset:
    """The data set of the DICOM file at `path`, as `pydicom.dcmread(path, defer_size=...)`."""
    try:
        return _read(path)
    except (_Unhandled, UnreadableObject):
        pass
    try:
        return pydicom.dcmread(path, defer_size=DEFER_SIZE)
    except InvalidDicomError:
        # No preamble or file meta (some archives store such objects): read it anyway.
        return pydicom.dcmread(path, defer_size=DEFER_SIZE, force=True)


def _read(path: Path) -> FileDataset:
    content = path.read_bytes()
    places, start = meta_places(content)
    meta = FileMetaDataset(_raw_dataset(content, 0, places, implicit=False, little_endian=True))
    syntax = str(meta.get("TransferSyntaxUID", ""))
    if syntax in _ENCODINGS:
        implicit, little_endian = _ENCODINGS[syntax]
    elif syntax and syntax != pydicom.uid.DeflatedExplicitVRLittleEndian:
        implicit, little_endian = False, True  # compressed pixel data: explicit VR LE
    else:
        raise _Unhandled(syntax or "no transfer syntax")
    data = content[start:]
    if implicit and data[4:6] in _KNOWN_VRS:
        raise _Unhandled("implicit VR declared, explicit VR found")  # dcmread switches
    places = element_places(data, implicit=implicit, little_endian=little_endian)
    dataset = _raw_dataset(content, start, places, implicit=implicit, little_endian=little_endian)
    charset: str | list[str] = default_encoding
    if _CHARSET in dataset:
        charset = convert_encodings(dataset[_CHARSET].value)
    dataset.set_original_encoding(implicit, little_endian, charset)
    ds = FileDataset(str(path), dataset, content[:128], meta, implicit, little_endian)
    ds.timestamp = os.stat(path).st_mtime
    ds.set_original_encoding(implicit, little_endian, dataset._character_set)
    return ds


def _raw_dataset(
    content: bytes, base: int, places: list[ElementPlace], *, implicit: bool, little_endian: bool
) -> Dataset:
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    for tag, encoded_vr, length, start, end in places:
        vr = None
        if encoded_vr is not None:
            vr = _KNOWN_VRS.get(encoded_vr)
            if vr is None:
                raise _Unhandled(f"unknown VR {encoded_vr!r}")
        value: bytes | None
        if length == _UNDEFINED:
            vr = _undefined_length_vr(tag, vr)
            value = content[base + start : base + end]
        elif length == 0:
            # With raw=True it is bytes or None; pydicom annotates every decoded empty value.
            value = empty_value_for_VR(vr, raw=True)  # type: ignore[assignment]
        elif length > DEFER_SIZE and tag != _CHARSET:
            value = None  # read from the file when used
        else:
            value = content[base + start : base + end]
        key = BaseTag(tag)
        elements[key] = RawDataElement(
            key, vr, length, value, base + start, implicit, little_endian
        )
    return Dataset(elements)


def _undefined_length_vr(tag: int, vr: str | None) -> str:
    """Sequences and encapsulated pixel data; dcmread has its own rules for the rest."""
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            raise _Unhandled("undefined length on a private element") from None
    if vr == "SQ" or (tag == _PIXEL_DATA and vr in ("OB", "OW", "OB or OW")):
        return "OB" if vr == "OB or OW" else vr
    raise _Unhandled(f"undefined length on {vr}")

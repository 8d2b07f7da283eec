"""An uncompressed instance rewritten as Explicit VR Little Endian, the transfer syntax PS3.18
sends when the client names none.

Implicit VR and deflated files only need pydicom to write them again. A big endian file's
values are decoded by pydicom as numbers and encoded again in little endian order, except
the raw words of OW, OF, OL, OD and OV values (pixel data among them), which are swapped here:
pydicom leaves that to its caller.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

# The width of the words of each binary VR that has words.
_WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def as_explicit_little_endian(path: Path) -> bytes:
    """The Part 10 bytes of the uncompressed instance at `path` in Explicit VR Little Endian."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        ds.walk(_to_little_endian)  # decodes every element, in the big endian it was read in
        ds.set_original_encoding(False, True, ds.original_character_set)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _to_little_endian(_: Dataset, elem: DataElement) -> None:
    width = _WORD_BYTES.get(elem.VR)
    if width and isinstance(elem.value, bytes) and len(elem.value) % width == 0:
        elem.value = np.frombuffer(elem.value, f">u{width}").astype(f"<u{width}").tobytes()

"""What the naming of one converted series is given, and what it answers.

The dataset writer builds `ConvertedSeries` from the catalog; `name_series` answers a
`Naming`. The properties of `ConvertedOutput` read the sidecar the way the naming needs it
(dcm2niix writes the complex component and echo per output, not per series).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .entities import BidsName

# The complex component of an image, as BIDS' `part` entity names it, from the values
# dcm2niix appends to ImageType and the vendors' own short forms (Siemens M/P/R/I).
_PARTS = {
    "MAGNITUDE": "mag",
    "M": "mag",
    "PHASE": "phase",
    "P": "phase",
    "REAL": "real",
    "R": "real",
    "IMAGINARY": "imag",
    "I": "imag",
}


@dataclass(frozen=True)
class ConvertedOutput:
    """One NIfTI file of a series, with what the naming reads of it."""

    nifti: str  # relative to the archive root, for messages only
    sidecar: Mapping[str, Any]  # dcmdb's JSON sidecar
    volumes: int  # size of the 4th dimension, 1 for a 3D image
    diffusion: bool  # has .bval/.bvec

    @property
    def image_type(self) -> tuple[str, ...]:
        value = self.sidecar.get("ImageType")
        if isinstance(value, str):
            return tuple(v.upper() for v in value.split("\\"))
        if isinstance(value, list | tuple):
            return tuple(str(v).upper() for v in value)
        return ()

    @property
    def part(self) -> str:
        """mag, phase, real or imag; mag where nothing says otherwise, as a scanner's
        images are magnitudes unless a component is stated."""
        # The last stated component wins: dcm2niix appends its own after the vendor's.
        for value in reversed(self.image_type):
            if value in _PARTS:
                return _PARTS[value]
        return "mag"

    @property
    def echo_number(self) -> int | None:
        value = self.sidecar.get("EchoNumber")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def number(self, key: str) -> float | None:
        value = self.sidecar.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    def text(self, key: str) -> str:
        value = self.sidecar.get(key)
        return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class ConvertedSeries:
    """One series of a study and its converted outputs, in the converter's order."""

    series_number: int | None
    description: str  # SeriesDescription ('' if none)
    protocol: str  # ProtocolName ('' if none)
    modality: str
    outputs: tuple[ConvertedOutput, ...]


@dataclass(frozen=True)
class Naming:
    """The BIDS names of a series' outputs (one per output, same order), or None for a
    leftover; `how` says how the names were found, or why none was, for the lab to act on."""

    names: tuple[BidsName, ...] | None
    how: str

    @classmethod
    def leftover(cls, why: str) -> Naming:
        return cls(None, why)

    @property
    def is_leftover(self) -> bool:
        return self.names is None

"""Reading the instances of one series: headers, duplicates and the attributes the rules use.

Headers are read with the pixel data deferred (read from the file only when asked for) and
elements decoded only when used (see `reading`), so classifying a long series costs little.
Nothing here converts anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .reading import read_file

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Transfer syntaxes preferred when the same SOP instance arrives more than once: the native
# encodings first, as they need no decoder.
_SYNTAX_PREFERENCE = {
    "1.2.840.10008.1.2.1": 0,  # explicit VR little endian
    "1.2.840.10008.1.2": 1,  # implicit VR little endian
    "1.2.840.10008.1.2.2": 2,  # explicit VR big endian
    "1.2.840.10008.1.2.1.99": 3,  # deflated
}


@dataclass(frozen=True)
class Instance:
    """One readable DICOM file of the series, its header and where it came from."""

    path: Path
    ds: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.ds.get("SOPInstanceUID", "") or "")

    @property
    def sop_class_uid(self) -> str:
        return str(self.ds.get("SOPClassUID", "") or "")

    @property
    def transfer_syntax(self) -> str:
        meta = getattr(self.ds, "file_meta", None)
        if meta is None:
            return ""
        return str(meta.get("TransferSyntaxUID", "") or "")

    @property
    def has_pixels(self) -> bool:
        return any(keyword in self.ds for keyword in PIXEL_KEYWORDS)

    @property
    def frames(self) -> int:
        return max(as_int(self.ds.get("NumberOfFrames")) or 1, 1)

    @property
    def image_type(self) -> tuple[str, ...]:
        return tuple(str(v).strip().upper() for v in as_list(self.ds.get("ImageType")))

    @property
    def is_mosaic(self) -> bool:
        return "MOSAIC" in self.image_type

    @property
    def series_number(self) -> int | None:
        return as_int(self.ds.get("SeriesNumber"))

    @property
    def instance_number(self) -> int | None:
        return as_int(self.ds.get("InstanceNumber"))

    @property
    def sort_key(self) -> tuple[int, int, str, str]:
        series = self.series_number
        number = self.instance_number
        return (
            series if series is not None else -1,
            number if number is not None else -1,
            self.sop_instance_uid,
            str(self.path),
        )

    def sop_class_name(self) -> str:
        uid = self.sop_class_uid
        if not uid:
            return "unknown SOP class"
        name = UID(uid).name
        return name if name else uid


def read_instances(files: Iterable[Path]) -> tuple[list[Instance], list[str]]:
    """The readable instances among `files` (sorted, one per SOP instance) and the problems met."""
    found: list[Instance] = []
    problems: list[str] = []
    for path in sorted({Path(f) for f in files}, key=str):
        try:
            ds = read_file(path)
        except Exception as exc:  # noqa: BLE001 - whatever pydicom makes of a bad file
            problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {exc})")
            continue
        if "SOPClassUID" not in ds and not any(k in ds for k in PIXEL_KEYWORDS):
            problems.append(f"{path.name}: not a DICOM object")
            continue
        found.append(Instance(path, ds))
    return sorted(_unique(found), key=lambda i: i.sort_key), problems


def _unique(instances: Sequence[Instance]) -> list[Instance]:
    """One instance per SOPInstanceUID: the same object may arrive in several encodings."""
    best: dict[str, Instance] = {}
    anonymous: list[Instance] = []
    for instance in instances:
        uid = instance.sop_instance_uid
        if not uid:
            anonymous.append(instance)
            continue
        kept = best.get(uid)
        if kept is None or _preference(instance) < _preference(kept):
            best[uid] = instance
    return [*best.values(), *anonymous]


def _preference(instance: Instance) -> tuple[int, str]:
    return (_SYNTAX_PREFERENCE.get(instance.transfer_syntax, 9), str(instance.path))


# Attribute helpers -----------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    try:
        return list(value)
    except TypeError:
        return [value]


def as_float(value: Any) -> float | None:
    values = as_list(value)
    if not values:
        return None
    try:
        result = float(values[0])
    except (TypeError, ValueError):
        return None
    return result if result == result else None  # NaN is no value


def as_int(value: Any) -> int | None:
    """The integer of an IS or US value; None when there is none or it is out of their
    32-bit range (a hostile ``1e400`` would otherwise be infinite, or name a file with
    hundreds of digits)."""
    number = as_float(value)
    if number is None or not -(2**31) <= number < 2**32:
        return None
    return int(number)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace").strip("\x00 ")
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(as_text(v) for v in value)
    return str(value).strip()


def private_value(ds: Dataset, group: int, creator: str, element: int) -> Any:
    """The value of private element (group, xx`element`) reserved by `creator`, or None.

    Looks the creator up tag by tag: pydicom's `private_block` sorts the whole data set.
    """
    tags = ds.keys()
    for block in range(0x10, 0x100):
        creator_tag = group << 16 | block
        if creator_tag in tags and as_text(ds[creator_tag].value) == creator:
            tag = group << 16 | block << 8 | element
            return ds[tag].value if tag in tags else None
    return None


def find_attribute(ds: Dataset, keyword: str) -> Any:
    """`keyword` at the top level, else in the shared then first per-frame functional groups."""
    if keyword in ds:
        return ds.get(keyword)
    for groups_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(groups_keyword)
        if not groups:
            continue
        value = _search_sequence_items(groups[0], keyword, depth=2)
        if value is not None:
            return value
    return None


def _search_sequence_items(item: Dataset, keyword: str, depth: int) -> Any:
    if keyword in item:
        return item.get(keyword)
    if depth == 0:
        return None
    for element in item:
        if element.VR == "SQ" and element.value:
            value = _search_sequence_items(element.value[0], keyword, depth - 1)
            if value is not None:
                return value
    return None

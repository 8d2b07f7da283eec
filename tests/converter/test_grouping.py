"""The names of the converter's outputs: a series folder name and the suffixes of its
volumes, from tag values a sender chose. Each must stay one file name in the nifti folder."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.converter.grouping import plan_volumes
from services.converter.instances import Instance, as_int
from shared.naming import resolve_under, series_folder_name
from tests.hostile_objects import element, filed_by, pad, part10
from tests.shared.test_naming import assert_component, nasty_text

NAME_MAX = 255  # bytes in a file name on every filesystem dcmdb runs on
NAMING_TAGS = {  # what the volumes of a series are told apart by, and named after
    0x00200011: "IS",  # Series Number
    0x00180086: "IS",  # Echo Numbers
    0x00180081: "DS",  # Echo Time
    0x00200013: "IS",  # Instance Number
    0x00200037: "DS",  # Image Orientation (Patient)
    0x00089208: "CS",  # Complex Image Component
    0x00080008: "CS",  # Image Type
}
numbers = st.one_of(
    st.integers().map(str),
    st.sampled_from(["1e400", "1e300", "-1e99", "nan", "inf", "", "  7 ", "1.5", "9" * 40, "2\\3"]),
    nasty_text,
)
images = st.fixed_dictionaries(
    {
        tag: st.one_of(st.none(), numbers, st.sampled_from(["PHASE", "P", "ORIGINAL\\PRIMARY\\P"]))
        for tag in NAMING_TAGS
    }  # fmt: skip
)


def instance(number: int, values: dict[int, str | None]) -> Instance:
    """An image whose naming tags hold `values`, read by pydicom as if from a file."""
    elements = [
        element(tag, NAMING_TAGS[tag], pad(value.encode("utf-8", "surrogatepass")[:60]))
        for tag, value in values.items()
        if value is not None
    ]
    data = filed_by("1.2.3", "1.2.3.4", f"1.2.3.4.{number}", *elements)
    ds = pydicom.dcmread(BytesIO(part10(data)))
    try:
        for tag in values:
            ds.get(tag)
    except (ValueError, OverflowError):  # infinity as an IS, for one
        # pydicom refuses to convert it: the conversion fails, with pydicom's reason
        assume(False)
    return Instance(Path(f"/nonexistent/{number}.dcm"), ds)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on values its VRs do not allow
@settings(max_examples=300, deadline=None)
@given(nasty_text, numbers, st.lists(images, min_size=1, max_size=8))
def test_output_names_stay_one_file_name_in_the_nifti_folder(
    description: str, number: str, series: list[dict[int, str | None]]
) -> None:
    base = series_folder_name(number, description)
    volumes = plan_volumes([instance(i, values) for i, values in enumerate(series)])
    out = Path("/archive/lab/study/nifti")
    for volume in volumes:
        name = f"{base}{volume.suffix}"
        assert_component(name[:64])
        assert len(f"{name}_99.nii.gz".encode()) <= NAME_MAX, name
        assert "/" not in name and "\\" not in name and "\0" not in name
        assert resolve_under(out, f"{name}.nii.gz").parent == out


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7), ("-3", -3), (" 12 ", 12), ("1e400", None), ("-inf", None), ("nan", None),
     (str(2**40), None), (None, None), ("x", None)],
)  # fmt: skip
def test_integers_beyond_32_bits_are_none(value: object, expected: int | None) -> None:
    assert as_int(value) == expected

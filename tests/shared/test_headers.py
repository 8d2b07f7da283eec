"""Reading identifiers from data sets as received: right on real data, strict on bad data."""

from __future__ import annotations

import contextlib
import functools
import struct
from pathlib import Path
from random import Random
from typing import Any

import pydicom
import pydicom.filebase
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from shared.errors import MissingIdentifier, UnreadableObject
from shared.headers import (
    CATALOG_KEYWORDS,
    Header,
    Identifiers,
    element_places,
    meta_places,
    read_identifiers,
)
from tests.conftest import TESTDATA
from tests.hostile_objects import (
    CANNOT_PARSE,
    CONTENT_SEQUENCE,
    ENCODINGS,
    EXPLICIT_BE,
    EXPLICIT_LE,
    HOSTILE,
    IMPLICIT_LE,
    MISSING_UID,
    MR_IMAGE_STORAGE,
    REFERENCED_IMAGE_SEQUENCE,
    Encoding,
    Hostile,
    element,
    identifying,
    item,
    length_fields,
    sequence,
)
from tests.mutations import LengthField, mutate
from tests.system import dicom_files


def split(path: Path) -> tuple[bytes, str]:
    """The data set bytes of a Part 10 file and its transfer syntax."""
    meta = read_file_meta_info(path)
    raw = path.read_bytes()
    group_length = struct.unpack_from("<L", raw, 132 + 8)[0]
    return raw[132 + 12 + group_length :], str(meta.TransferSyntaxUID)


def pydicom_identifiers(path: Path) -> Identifiers:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Identifiers(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
    )  # fmt: skip


TEXT_KEYWORDS = (
    "PatientID", "PatientName", "StudyDate", "StudyTime", "StudyDescription",
    "SeriesDescription", "Modality", "ReferringPhysicianName", "AccessionNumber", "ProtocolName",
)  # fmt: skip


def test_header_values_match_pydicom_on_every_test_file(testdata: Path) -> None:
    for path in dicom_files(testdata):
        header = Header.from_part10(path.read_bytes())
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in TEXT_KEYWORDS:
            assert header.text(keyword) == str(ds.get(keyword, "") or "").strip(), (path, keyword)
        for keyword in ("SeriesNumber", "InstanceNumber"):
            value = ds.get(keyword)
            assert header.integer(keyword) == (None if value in (None, "") else int(value))
        assert header.meta_text(0x00020010) == ds.file_meta.TransferSyntaxUID


def test_text_is_decoded_with_the_data_sets_character_set() -> None:
    dataset = minimal(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen")
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, dataset)
    header = Header.from_data_set(buffer.getvalue(), EXPLICIT_LE.syntax)
    assert header.text("PatientName") == "Müller^Jürgen"
    assert "Müller".encode("latin-1") in buffer.getvalue()  # really encoded as Latin-1


def test_a_nul_inside_text_is_dropped() -> None:
    """PostgreSQL refuses text holding NUL; the sorter stores these values."""
    raw = identifying(middle=element(0x00100010, "PN", b"DOE\0^JANE\0\0"))
    assert Header.from_data_set(raw, EXPLICIT_LE.syntax).text("PatientName") == "DOE^JANE"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"12", 12), (b" -7 ", -7), (b"2147483647", 2**31 - 1), (b"-2147483648", -(2**31)),
     (b"2147483648", None), (b"99999999999999999999999", None), (b"1e400", None), (b"", None)],
)  # fmt: skip
def test_integers_beyond_the_range_of_is_are_none(value: bytes, expected: int | None) -> None:
    """IS holds 32-bit integers, as do the catalog's columns: a larger one cannot be stored."""
    raw = identifying(middle=element(0x00200011, "IS", value + b" " * (len(value) % 2)))
    assert Header.from_data_set(raw, EXPLICIT_LE.syntax).integer("SeriesNumber") == expected


def test_identifiers_match_pydicom_on_every_test_file(testdata: Path) -> None:
    files = dicom_files(testdata)
    syntaxes = set()
    for path in files:
        data_set, syntax = split(path)
        syntaxes.add(syntax)
        assert read_identifiers(data_set, syntax) == pydicom_identifiers(path), path
    assert len(files) > 300 and len(syntaxes) >= 9  # every encoding in the data was covered


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01])
def test_a_data_set_cut_short_is_unreadable(testdata: Path, keep: float) -> None:
    for path in dicom_files(testdata / "siemens_transfer_syntaxes"):
        data_set, syntax = split(path)
        with pytest.raises(UnreadableObject):
            read_identifiers(data_set[: int(len(data_set) * keep) - 1], syntax)


def test_garbage_is_unreadable() -> None:
    with pytest.raises(UnreadableObject):
        read_identifiers(b"\xff" * 1000, EXPLICIT_LE.syntax)
    with pytest.raises(UnreadableObject):
        read_identifiers(b"not deflated", "1.2.840.10008.1.2.1.99")


def encode(dataset: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, dataset)
    return buffer.getvalue()


def minimal(**values: str) -> pydicom.Dataset:
    dataset = pydicom.Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    dataset.SOPInstanceUID = "1.2.3.4"
    dataset.StudyInstanceUID = "1.2.3"
    dataset.SeriesInstanceUID = "1.2.3.5"
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


def test_a_missing_or_invalid_uid_is_named() -> None:
    dataset = minimal()
    del dataset.StudyInstanceUID
    with pytest.raises(MissingIdentifier, match="StudyInstanceUID"):
        read_identifiers(encode(dataset), EXPLICIT_LE.syntax)
    with pytest.raises(MissingIdentifier, match="SeriesInstanceUID"):
        read_identifiers(encode(minimal(SeriesInstanceUID="9" * 70)), EXPLICIT_LE.syntax)


def nested_sequences(depth: int) -> bytes:
    """Content Sequence inside Content Sequence, ``depth`` deep, all of undefined length."""
    sequence = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    inner = b""
    for _ in range(depth):
        inner = sequence + item + inner + item_end + sequence_end
    return inner


def test_nested_sequences_are_walked_to_their_end() -> None:
    raw = encode(minimal()) + nested_sequences(5)
    assert read_identifiers(raw, EXPLICIT_LE.syntax).sop_instance_uid == "1.2.3.4"
    with pytest.raises(UnreadableObject):
        read_identifiers(raw[:-8], EXPLICIT_LE.syntax)  # the outermost delimiter is missing


def test_deeply_nested_sequences_are_refused_without_recursion_error() -> None:
    raw = encode(minimal()) + nested_sequences(5000)
    with pytest.raises(UnreadableObject, match="nested"):
        read_identifiers(raw, EXPLICIT_LE.syntax)


# --- hostile input: whatever the bytes, UnreadableObject or an answer -----------------------

SEED_FILES = (
    "pydicom_mr_small_transfer_syntax_variants/dicom/MR_small.dcm",
    "pydicom_mr_small_transfer_syntax_variants/dicom/MR_small_implicit.dcm",
    "pydicom_mr_small_transfer_syntax_variants/dicom/MR_small_bigendian.dcm",
    "pydicom_mr_small_transfer_syntax_variants/dicom/image_dfl.dcm",
    "pydicom_mr_small_transfer_syntax_variants/dicom/MR_small_RLE.dcm",
    "pydicom_nonimage_objects/dicom/test-SR.dcm",
    "pydicom_nonimage_objects/dicom/rtplan.dcm",
    "pydicom_small_singles/dicom/JPGExtended.dcm",
)


ENCODINGS_BY_SYNTAX = {enc.syntax: enc for enc in ENCODINGS}


@functools.cache
def seed(index: int) -> tuple[bytes, str, list[LengthField]]:
    """A real file: its data set, transfer syntax and the length fields of its elements."""
    data_set, syntax = split(TESTDATA / SEED_FILES[index])
    enc = ENCODINGS_BY_SYNTAX.get(syntax, EXPLICIT_LE)  # compressed pixels: explicit VR LE
    if syntax == DeflatedExplicitVRLittleEndian:
        return data_set, syntax, []
    places = element_places(data_set, implicit=enc.implicit, little_endian=enc.little_endian)
    return data_set, syntax, length_fields(places, enc.little_endian)


def read_everything(data_set: bytes, syntax: str) -> None:
    """What the receiver and the sorter read from a data set; UnreadableObject is an answer."""
    with contextlib.suppress(UnreadableObject):
        read_identifiers(data_set, syntax)
    try:
        header = Header.from_data_set(data_set, syntax)
    except UnreadableObject:
        return
    for keyword in CATALOG_KEYWORDS:
        header.text(keyword)
    header.integer("SeriesNumber")
    header.integer("InstanceNumber")
    with contextlib.suppress(MissingIdentifier):
        header.identifiers()


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(SEED_FILES) - 1), st.randoms(use_true_random=False))
def test_mutated_data_sets_are_read_or_refused_as_unreadable(index: int, rng: Random) -> None:
    data_set, syntax, fields = seed(index)
    mutated, _what = mutate(data_set, rng, fields)
    read_everything(mutated, syntax)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(SEED_FILES) - 1), st.randoms(use_true_random=False))
def test_mutated_files_are_read_or_refused_as_unreadable(index: int, rng: Random) -> None:
    content = (TESTDATA / SEED_FILES[index]).read_bytes()
    meta_fields = length_fields(meta_places(content)[0], little_endian=True)
    mutated, _what = mutate(content, rng, meta_fields)
    with contextlib.suppress(UnreadableObject):
        meta_places(mutated)
    try:
        header = Header.from_part10(mutated)
        header.identifiers()
        header.meta_text(0x00020010)
    except UnreadableObject:
        pass


def test_a_sequence_of_anything_but_items_is_unreadable() -> None:
    for enc in (EXPLICIT_LE, EXPLICIT_BE):
        raw = identifying(enc, middle=element(REFERENCED_IMAGE_SEQUENCE, "SQ", b"x" * 12, enc))
        with pytest.raises(UnreadableObject, match="expected an item"):
            read_identifiers(raw, enc.syntax)


def test_a_value_that_only_starts_like_a_sequence_is_opaque() -> None:
    """Implicit VR and UN do not say what is a sequence: one that does not parse is bytes."""
    looks_like_one = struct.pack("<HHL", 0xFFFE, 0xE000, 2) + b"not an item"
    raw = identifying(IMPLICIT_LE, middle=element(0x00091010, "UN", looks_like_one, IMPLICIT_LE))
    assert read_identifiers(raw, IMPLICIT_LE.syntax).sop_class_uid == MR_IMAGE_STORAGE
    raw = identifying(middle=element(0x00091010, "UN", looks_like_one))
    assert read_identifiers(raw, EXPLICIT_LE.syntax).sop_class_uid == MR_IMAGE_STORAGE


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda hostile: hostile.name)
def test_hostile_objects_are_refused_with_the_right_error(hostile: Hostile) -> None:
    expected = MissingIdentifier if hostile.status == MISSING_UID else UnreadableObject
    with pytest.raises(expected) as refused:
        read_identifiers(hostile.data_set, hostile.syntax)
    if hostile.status == CANNOT_PARSE:
        assert not isinstance(refused.value, MissingIdentifier)


# Trees of sequences in every length form: the walker must read every one that nests no
# deeper than it allows, as pydicom does, and refuse every one that nests deeper.
LEAF_TAGS = ((0x00081030, "LO"), (0x00091010, "OB"), (0x00280010, "US"), (0x00091011, "UN"))
Tree = Any  # a leaf (tag, VR, value) or a sequence (tag, defined, [(defined, [Tree])])
leaves = st.tuples(
    st.sampled_from(LEAF_TAGS),
    st.one_of(
        st.binary(max_size=24),
        st.binary(max_size=24).map(lambda value: b"\xfe\xff\x00\xe0" + value),  # item-like
    ),
)
trees = st.recursive(
    leaves,
    lambda children: st.tuples(
        st.sampled_from((REFERENCED_IMAGE_SEQUENCE, CONTENT_SEQUENCE)),
        st.booleans(),
        st.lists(st.tuples(st.booleans(), st.lists(children, max_size=3)), max_size=3),
    ),
    max_leaves=20,
)


def encode_tree(tree: Tree, enc: Encoding) -> bytes:
    if len(tree) == 2:
        (tag, vr), value = tree
        return element(tag, vr, value + b"\0" * (len(value) % 2), enc)
    tag, defined, items = tree
    encoded = [
        item(b"".join(encode_tree(child, enc) for child in children), enc, defined=item_defined)
        for item_defined, children in items
    ]
    return sequence(tag, encoded, enc, defined=defined)


def tree_depth(tree: Tree) -> int:
    """How deep the walker goes: one level per sequence that has an item."""
    if len(tree) == 2 or not tree[2]:
        return 0
    return 1 + max((tree_depth(child) for _, children in tree[2] for child in children), default=0)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ENCODINGS), st.lists(trees, max_size=3), st.integers(0, 40), st.booleans())
def test_sequences_nested_within_the_limit_are_read_and_deeper_ones_refused(
    enc: Encoding, forest: list[Tree], wrapping: int, defined: bool
) -> None:
    for _ in range(wrapping):  # push the forest down, to around the limit
        forest = [(REFERENCED_IMAGE_SEQUENCE, defined, [(not defined, forest)])]
    raw = identifying(enc, middle=b"".join(encode_tree(tree, enc) for tree in forest))
    depth = max((tree_depth(tree) for tree in forest), default=0)
    if depth > 32:
        with pytest.raises(UnreadableObject, match="nested too deeply"):
            read_identifiers(raw, enc.syntax)
        return
    assert read_identifiers(raw, enc.syntax).sop_instance_uid == "1.2.826.0.1.3680043.8.498.1"

"""Reading identifiers from data sets as received: right on real data, strict on bad data."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pydicom.filebase
import pytest
from pydicom.filereader import read_file_meta_info

from shared.errors import MissingIdentifier, UnreadableObject
from shared.headers import Header, Identifiers, read_identifiers
from tests.system import dicom_files

EXPLICIT_LE = "1.2.840.10008.1.2.1"


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
    header = Header.from_data_set(buffer.getvalue(), EXPLICIT_LE)
    assert header.text("PatientName") == "Müller^Jürgen"
    assert "Müller".encode("latin-1") in buffer.getvalue()  # really encoded as Latin-1


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
        read_identifiers(b"\xff" * 1000, EXPLICIT_LE)
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
        read_identifiers(encode(dataset), EXPLICIT_LE)
    with pytest.raises(MissingIdentifier, match="SeriesInstanceUID"):
        read_identifiers(encode(minimal(SeriesInstanceUID="9" * 70)), EXPLICIT_LE)


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
    assert read_identifiers(raw, EXPLICIT_LE).sop_instance_uid == "1.2.3.4"
    with pytest.raises(UnreadableObject):
        read_identifiers(raw[:-8], EXPLICIT_LE)  # the outermost delimiter is missing


def test_deeply_nested_sequences_are_refused_without_recursion_error() -> None:
    raw = encode(minimal()) + nested_sequences(5000)
    with pytest.raises(UnreadableObject, match="nested"):
        read_identifiers(raw, EXPLICIT_LE)

"""The decision on a copy of a filed instance (`shared.overwrite`), on real files in every
encoding of the test data and copies derived from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.errors import UnreadableObject
from shared.overwrite import Copy, OverwritePolicy, Pixels, Verdict, decide, history_path
from tests import copies
from tests.arrivals import dicom_files

ENCODINGS = "pydicom_mr_small_transfer_syntax_variants"  # one image, six transfer syntaxes


def test_every_encoding_of_one_image_reads_as_a_whole_copy_of_one_shape(testdata: Path) -> None:
    paths = [p for p in dicom_files(testdata, ENCODINGS) if p.name.startswith("MR_small")]
    read = [Copy.of_file(path.read_bytes()) for path in paths]
    assert len(read) == 6
    assert {(c.sop_class_uid, c.rows, c.columns, c.frames, c.pixels) for c in read} == {
        (read[0].sop_class_uid, 64, 64, 1, Pixels.WHOLE)
    }
    assert len({c.digest for c in read}) == len(read)  # each encoding is another data set
    # Another encoding of the same image is a better copy (same class, shape, all pixels).
    assert {decide(OverwritePolicy.BETTER, read[0], c).verdict for c in read[1:]} == {
        Verdict.REPLACE
    }


def test_a_deflated_data_set_reads_inflated(testdata: Path) -> None:
    (deflated,) = [p for p in dicom_files(testdata, ENCODINGS) if p.name == "image_dfl.dcm"]
    read = Copy.of_file(deflated.read_bytes())
    assert (read.rows, read.columns, read.pixels) == (512, 512, Pixels.WHOLE)


@pytest.mark.parametrize(
    ("derive", "pixels", "verdicts"),
    [
        (copies.without_pixels, Pixels.NONE, ("refuse", "refuse", "replace")),
        (copies.cut_short, Pixels.SHORT, ("refuse", "refuse", "replace")),
        (copies.of_another_class, Pixels.WHOLE, ("refuse", "refuse", "replace")),
        (copies.of_another_shape, Pixels.WHOLE, ("refuse", "refuse", "replace")),
        (copies.corrected, Pixels.WHOLE, ("refuse", "replace", "replace")),
        (copies.same_data_set, Pixels.WHOLE, ("identical", "identical", "identical")),
    ],
)
def test_each_policy_decides_on_each_kind_of_copy(
    testdata: Path, derive: copies.Derive, pixels: Pixels, verdicts: tuple[str, ...]
) -> None:
    source = dicom_files(testdata, copies.GE_FMRI.split("/")[0])[0]
    filed, arriving = Copy.of_file(source.read_bytes()), Copy.of_file(derive(source))
    assert arriving.pixels is pixels
    policies = (OverwritePolicy.NEVER, OverwritePolicy.BETTER, OverwritePolicy.ALWAYS)
    assert tuple(decide(p, filed, arriving).verdict for p in policies) == verdicts
    refused = decide(OverwritePolicy.BETTER, filed, arriving)
    assert len(f"not filed: {refused.reason}") <= 64  # the Error Comment holds it whole


def test_a_filed_copy_that_cannot_be_read_is_replaced_under_better_only(testdata: Path) -> None:
    source = dicom_files(testdata, copies.GE_FMRI.split("/")[0])[0]
    arriving = Copy.of_file(copies.without_pixels(source))
    assert decide(OverwritePolicy.BETTER, None, arriving).verdict is Verdict.REPLACE
    assert decide(OverwritePolicy.NEVER, None, arriving).verdict is Verdict.REFUSE


def test_a_copy_cut_in_transfer_does_not_read(testdata: Path) -> None:
    source = dicom_files(testdata, copies.GE_FMRI.split("/")[0])[0]
    with pytest.raises(UnreadableObject):
        Copy.of_file(source.read_bytes()[:-100])


def test_a_replaced_copy_is_kept_beside_where_it_was_filed_named_by_its_content() -> None:
    kept = history_path("LAB/20240101_P_X/001_T1/1.2.3.dcm", "ab" * 32)
    assert str(kept) == "LAB/20240101_P_X/001_T1/1.2.3.abababababababab.dcm"

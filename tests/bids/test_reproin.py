"""ReproIn protocol names read as heudiconv's `reproin` heuristic reads them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.bids.entities import BidsName
from shared.bids.naming import name_series
from shared.bids.reproin import ReproinName, find, parse
from shared.bids.rules import Rules
from shared.bids.series import ConvertedSeries
from tests.bids.converted import Converted, named, renamed

# The tests of real series share one conversion of each folder.
pytestmark = pytest.mark.shared_setup()

# name at the console -> (datatype, suffix, entities)
READ = [
    ("anat-T1w_acq-tfl", ("anat", "T1w", (("acq", "tfl"),))),
    ("func-bold_task-fa_run-1", ("func", "bold", (("task", "fa"), ("run", "01")))),
    ("fmap-epi_dir-AP", ("fmap", "epi", (("dir", "AP"),))),
    ("dwi_dir-AP", ("dwi", None, (("dir", "AP"),))),
    ("WIP func-bold_task-rest__dup-01", ("func", "bold", (("task", "rest"),))),
    ("PU:func_task-rest_run-02", ("func", None, (("task", "rest"), ("run", "02")))),
    ("  anat-T2w  ", ("anat", "T2w", ())),
    ("bids_anat-FLAIR_acq-sag", ("anat", "FLAIR", (("acq", "sag"),))),
    (
        "func-bold_task-nback_acq-mb4_dir-PA_run-10",
        ("func", "bold", (("task", "nback"), ("acq", "mb4"), ("dir", "PA"), ("run", "10"))),
    ),
    (
        "func-bold_task-rest_run-01_echo-2",
        ("func", "bold", (("task", "rest"), ("run", "01"), ("echo", "2"))),
    ),
    ("anat-T1w_ce-gad_rec-norm", ("anat", "T1w", (("ce", "gad"), ("rec", "norm")))),
    # heudiconv's sanitising: '-' inside a value becomes X, punctuation goes.
    ("fmap_acq-2.4mm", ("fmap", None, (("acq", "24mm"),))),
    ("func_task-face-house", ("func", None, (("task", "faceXhouse"),))),
    ("fmap-gre_acq-3mm", ("fmap", "gre", (("acq", "3mm"),))),
    ("scout", ("anat", "scout", ())),
]


@pytest.mark.parametrize(("text", "expected"), READ)
def test_read(text: str, expected: tuple[str, str | None, tuple[tuple[str, str], ...]]) -> None:
    name = parse(text)
    assert name is not None
    assert (name.datatype, name.suffix, name.entities) == expected
    assert name.problems == ()


@pytest.mark.parametrize(
    "text",
    ["", "mprage", "DWI_dir80_PA", "T1_MPRAGE", "gre_field_mapping", "Anat-T1w", "bids", "rest"],
)
def test_not_reproin(text: str) -> None:
    assert parse(text) is None


NOTED = [
    ("anat-T1w_ses-01", "ses-01 ignored: dcmdb labels sessions itself", ()),
    ("func_task-rest_run+", "run+ left to the dataset writer", (("task", "rest"),)),
    ("fmap-gre_acq-x", "'gre' is not a BIDS field-map suffix", (("acq", "x"),)),
]


@pytest.mark.parametrize(("text", "note", "entities"), NOTED)
def test_noted(text: str, note: str, entities: tuple[tuple[str, str], ...]) -> None:
    name = parse(text)
    assert name is not None and name.problems == ()
    assert any(n.startswith(note) for n in name.notes), name.notes
    assert name.entities == entities


PROBLEMS = [
    ("func-bold_task-rest_highres", "'highres' is not a <key>-<value> pair"),
    ("anat-T1w_foo-bar", "'foo' is not a BIDS entity"),
    ("anat-T1w_sub-01", "'sub' is not a BIDS entity"),
    ("func-bold_task-a_task-b", "'task' is given twice"),
    ("func-bold_task-a_run-x1", "run 'x1' is not a number"),
]


@pytest.mark.parametrize(("text", "problem"), PROBLEMS)
def test_problems(text: str, problem: str) -> None:
    name = parse(text)
    assert name is not None
    assert name.problems == (problem,)


def _series(protocol: str, description: str) -> ConvertedSeries:
    return ConvertedSeries(1, description, protocol, "MR", ())


def test_protocol_name_first_then_description() -> None:
    assert find(_series("func-bold_task-a", "func-bold_task-b")) == (
        "protocol name",
        parse("func-bold_task-a"),
    )
    found = find(_series("ep2d_bold", "func-bold_task-b"))
    assert found is not None and found[0] == "series description"
    assert isinstance(found[1], ReproinName) and dict(found[1].entities)["task"] == "b"
    assert find(_series("ep2d_bold", "BOLD rest")) is None


# Real series renamed at the console: name -> the names of its outputs, or a leftover's reason.
def test_reproin_bold_on_a_real_series(converted: Converted) -> None:
    series = renamed(converted("siemens_xa30_func_bold"), "WIP func-bold_task-rest__dup-01")
    naming = name_series(series, Rules())
    assert naming.names == (BidsName("func", "bold", (("task", "rest"),)),)
    assert naming.how == "ReproIn protocol name 'WIP func-bold_task-rest__dup-01'"


def test_reproin_dwi_defaults_to_dwi(converted: Converted) -> None:
    series = renamed(converted("siemens_xa30_dwi_enhanced_pa"), "dwi_dir-PA")
    assert named(series) == ["dwi/sub-S_ses-T_dir-PA_dwi"]


FIELD_MAPS = [
    # fmap without a suffix: magnitude1/2 by echo, phasediff for the one phase image
    (
        "siemens_xa30_fieldmap_magnitude",
        "fmap_acq-3mm",
        ["acq-3mm_magnitude1", "acq-3mm_magnitude2"],
    ),
    ("siemens_xa30_fieldmap_phasediff", "fmap_acq-3mm", ["acq-3mm_phasediff"]),
    ("siemens_xa30_fieldmap_phasediff", "fmap-gre_acq-3mm", ["acq-3mm_phasediff"]),
    ("siemens_xa30_fieldmap_magnitude", "fmap-magnitude", ["magnitude1", "magnitude2"]),
    # two phase images: numbered by echo
    ("philips_dual_echo_mag_phase", "fmap", ["magnitude1", "phase1", "magnitude2", "phase2"]),
    # a dir makes the magnitudes the EPIs of a blip pair
    ("siemens_xa30_func_bold", "fmap_dir-AP", ["dir-AP_epi"]),
    ("siemens_xa30_func_bold", "fmap-epi_dir-AP", ["dir-AP_epi"]),
    ("philips_enhanced_fieldmap", "fmap-fieldmap", ["magnitude", "fieldmap"]),
]


@pytest.mark.parametrize(("folder", "name", "stems"), FIELD_MAPS)
def test_reproin_field_maps(converted: Converted, folder: str, name: str, stems: list[str]) -> None:
    series = renamed(converted(folder), name)
    assert named(series) == [f"fmap/sub-S_ses-T_{stem}" for stem in stems]


LEFTOVERS = [
    ("func-bold_run-01", "a func series needs a task: name it func-bold_task-<name>"),
    ("anat_acq-x", "anat needs its suffix in the name (anat-T1w, anat-T2w, anat-FLAIR)"),
    ("anat-scout", "a scout: localizers are not part of the BIDS dataset"),
    ("func-bold_task-rest_highres", "'highres' is not a <key>-<value> pair"),
    ("behav_task-x", "behav holds no images in BIDS"),
    ("anat-T1_w", "'w' is not a <key>-<value> pair"),
    ("anat-T1w_acq-", "not a BIDS name: acq-: not a BIDS acq value"),
]


@pytest.mark.parametrize(("name", "why"), LEFTOVERS)
def test_reproin_names_that_cannot_be_honoured(converted: Converted, name: str, why: str) -> None:
    naming = name_series(renamed(converted("siemens_xa30_t1w_3d_classic"), name), Rules())
    assert naming.names is None
    assert naming.how == f"ReproIn protocol name {name!r}: {why}"


def test_single_band_reference_under_the_protocol_name(converted: Converted) -> None:
    series = renamed(converted("siemens_xa30_func_bold"), "func-bold_task-rest_run-01")
    sbref = replace(series, description="func-bold_task-rest_run-01_SBRef")
    naming = name_series(sbref, Rules())
    assert naming.names == (BidsName("func", "sbref", (("task", "rest"), ("run", "01"))),)
    assert naming.how == (
        "ReproIn protocol name 'func-bold_task-rest_run-01', "
        "a single-band reference ('func-bold_task-rest_run-01_SBRef')"
    )


def test_a_phase_series_under_the_protocol_name_is_marked_as_phase(converted: Converted) -> None:
    # The scanner saves the phase of an acquisition as a series of its own.
    series = renamed(converted("philips_dual_echo_mag_phase"), "anat-MEGRE_echo-1")
    phase = replace(series, outputs=series.outputs[1:2])
    assert phase.outputs[0].part == "phase"
    assert named(phase) == ["anat/sub-S_ses-T_echo-1_part-phase_MEGRE"]

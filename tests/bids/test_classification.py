"""Naming real series: converted by dcmdb's converter from the test data, then named by
ReproIn where the protocol says so and by their acquisition where it does not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.bids.classification import NEEDS_TASK, classify
from shared.bids.entities import BidsName
from shared.bids.naming import name_series
from shared.bids.rules import Rules
from tests.bids.converted import Converted, named, renamed

# All tests of the module share one conversion of each folder.
pytestmark = pytest.mark.shared_setup()


def test_reproin_t1w(converted: Converted) -> None:
    naming = name_series(converted("siemens_xa30_t1w_3d_classic"), Rules())
    assert naming.names == (BidsName("anat", "T1w", (("acq", "tfl"),)),)
    assert naming.how == "ReproIn protocol name 'anat-T1w_acq-tfl'"


def test_t1w_renamed_is_still_t1w_by_its_parameters(converted: Converted) -> None:
    series = renamed(converted("siemens_xa30_t1w_3d_classic"), "mprage_renamed")
    naming = name_series(series, Rules())
    assert naming.names == (BidsName("anat", "T1w"),)
    assert naming.how == "classified: 3D inversion-recovery gradient echo (T1w)"


def test_reproin_bold(converted: Converted) -> None:
    naming = name_series(converted("siemens_xa30_func_bold"), Rules())
    assert naming.names == (BidsName("func", "bold", (("task", "fa"), ("run", "01"))),)


def test_bold_renamed_is_a_leftover_asking_for_a_task(converted: Converted) -> None:
    naming = name_series(renamed(converted("siemens_xa30_func_bold"), "ep2d_bold_sms"), Rules())
    assert naming.names is None
    assert naming.how == NEEDS_TASK


def test_bold_said_to_be_at_rest_gets_task_rest(converted: Converted) -> None:
    series = renamed(converted("siemens_xa30_func_bold"), "Resting_state_MB6")
    assert named(series) == ["func/sub-S_ses-T_task-rest_bold"]
    # The enhanced multi-frame XA10 series is described 'REST1 w SMS PF7-8'.
    assert named(converted("siemens_xa10_enhanced_fmri")) == ["func/sub-S_ses-T_task-rest_bold"]


def test_ge_bold_without_a_task_is_a_leftover(converted: Converted) -> None:
    assert name_series(converted("ge_fmri_epi_4d"), Rules()).how == NEEDS_TASK


def test_dwi_with_its_direction(converted: Converted) -> None:
    series = converted("siemens_xa30_dwi_enhanced_pa")
    assert series.description == "DWI_dir80_PA"  # not a ReproIn name: classified
    naming = name_series(series, Rules())
    assert naming.names == (BidsName("dwi", "dwi", (("dir", "PA"),)),)
    assert naming.how.startswith("classified: diffusion-weighted")


def test_dwi_without_a_direction_in_its_name(converted: Converted) -> None:
    series = renamed(converted("siemens_xa30_dwi_enhanced_pa"), "DTI 80 directions")
    assert named(series) == ["dwi/sub-S_ses-T_dwi"]


def test_field_map_magnitudes(converted: Converted) -> None:
    series = converted("siemens_xa30_fieldmap_magnitude")
    assert [o.echo_number for o in series.outputs] == [1, 2]
    assert named(series) == ["fmap/sub-S_ses-T_magnitude1", "fmap/sub-S_ses-T_magnitude2"]


def test_field_map_magnitudes_by_their_sequence_whatever_their_name(
    converted: Converted,
) -> None:
    # Siemens' field-mapping sequence (*fm2d2r) says what the two echoes are.
    series = renamed(converted("siemens_xa30_fieldmap_magnitude"), "B0 before task")
    assert named(series) == ["fmap/sub-S_ses-T_magnitude1", "fmap/sub-S_ses-T_magnitude2"]


def test_two_echo_gradient_echo_with_nothing_saying_field_map_is_a_leftover(
    converted: Converted,
) -> None:
    # As a Dixon or a dual-echo anatomical would look.
    series = renamed(converted("siemens_xa30_fieldmap_magnitude"), "dual_echo")
    series = replace(
        series,
        outputs=tuple(
            replace(o, sidecar={**o.sidecar, "SequenceName": "*fl2d2"}) for o in series.outputs
        ),
    )
    naming = name_series(series, Rules())
    assert naming.names is None
    assert "contrast its parameters do not tell" in naming.how


def test_phase_difference(converted: Converted) -> None:
    naming = name_series(converted("siemens_xa30_fieldmap_phasediff"), Rules())
    assert naming.names == (BidsName("fmap", "phasediff"),)
    assert "phase difference" in naming.how


def test_philips_dual_echo_magnitude_and_phase(converted: Converted) -> None:
    assert named(converted("philips_dual_echo_mag_phase")) == [
        "fmap/sub-S_ses-T_magnitude1",
        "fmap/sub-S_ses-T_phase1",
        "fmap/sub-S_ses-T_magnitude2",
        "fmap/sub-S_ses-T_phase2",
    ]


def test_philips_field_map_in_hz(converted: Converted) -> None:
    series = converted("philips_enhanced_fieldmap")
    assert series.protocol == "WIP B0 NS"
    assert named(series) == ["fmap/sub-S_ses-T_magnitude", "fmap/sub-S_ses-T_fieldmap"]


def test_echoes_and_parts_tell_outputs_of_one_reproin_series_apart(
    converted: Converted,
) -> None:
    series = renamed(converted("philips_dual_echo_mag_phase"), "WIP anat-MEGRE_acq-dual__x")
    assert named(series) == [
        "anat/sub-S_ses-T_acq-dual_echo-1_part-mag_MEGRE",
        "anat/sub-S_ses-T_acq-dual_echo-1_part-phase_MEGRE",
        "anat/sub-S_ses-T_acq-dual_echo-2_part-mag_MEGRE",
        "anat/sub-S_ses-T_acq-dual_echo-2_part-phase_MEGRE",
    ]


def test_outputs_nothing_tells_apart_are_a_leftover(converted: Converted) -> None:
    series = converted("siemens_xa30_t1w_3d_classic")
    twice = replace(series, outputs=series.outputs * 2)
    naming = name_series(twice, Rules())
    assert naming.names is None
    assert "would all be named 'T1w'" in naming.how


def test_flair_by_its_inversion_time(converted: Converted) -> None:
    # A 3D spin echo with TI 2.2 s, TR 6 s.
    series = converted("d2n_mr_4slice_uncompressed")
    naming = classify(series)
    assert naming.names == (BidsName("anat", "FLAIR"),)
    assert naming.how == "classified: spin echo with a long inversion time (FLAIR)"


def test_spin_echo_of_long_tr_and_short_te_is_a_leftover(converted: Converted) -> None:
    # Hitachi SE, TR 4 s, TE 12 ms: proton density weighted, which dcmdb does not guess.
    naming = name_series(converted("d2n_hitachi_mr"), Rules())
    assert naming.names is None
    assert naming.how.startswith("an image whose contrast its parameters do not tell")
    assert "TR 4000 ms, TE 12 ms" in naming.how


def test_ct_is_a_leftover(converted: Converted) -> None:
    naming = name_series(converted("d2n_ct_gantry_tilt"), Rules())
    assert naming.names is None
    assert naming.how.startswith("modality CT:")


def test_localizers_are_leftovers(converted: Converted) -> None:
    # The converter writes nothing for the GE 3-plane localizer ...
    assert name_series(converted("ge_3plane_localizer"), Rules()).how == "no converted outputs"
    # ... and a localizer it converts is known by its name.
    series = renamed(converted("siemens_xa30_t1w_3d_classic"), "AAHead_Scout_32ch")
    naming = name_series(series, Rules())
    assert naming.names is None
    assert naming.how.startswith("a localizer")


@pytest.mark.parametrize("name", ["mp2rage_INV1", "T1_mp2rage_sag_p3", "MP2RAGE_UNI"])
def test_mp2rage_is_no_t1w(converted: Converted, name: str) -> None:
    # An MP2RAGE's first inversion has every parameter of an MPRAGE.
    naming = name_series(renamed(converted("siemens_xa30_t1w_3d_classic"), name), Rules())
    assert naming.names is None
    assert naming.how.startswith("an MP2RAGE image")

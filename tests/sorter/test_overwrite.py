"""Copies of filed instances, judged by DCMDB_OVERWRITE when the sorter files them: real GE
fMRI slices and copies derived from them, a real archive, SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from services.sorter.filing import Filer, Outcome
from shared.catalog.database import open_catalog
from shared.catalog.models import InstanceHistory, Series
from shared.catalog.states import Completion, ConversionState
from shared.overwrite import OverwritePolicy, history_path
from tests import copies
from tests.arrivals import Sorter, arrive, dicom_files, next_stamp, with_new_uids

pytestmark = pytest.mark.integration

Derive = Callable[[Path], bytes]
REFUSED_UNDER_BETTER = {
    "without pixel data": (copies.without_pixels, "no pixel data"),
    "cut short": (copies.cut_short, "pixel data cut short"),
    "of another SOP class": (copies.of_another_class, "another SOP class"),
    "of another shape": (copies.of_another_shape, "shape 32x64x1"),
}


@pytest.fixture
def slice_(testdata: Path) -> Path:
    return dicom_files(testdata, copies.GE_FMRI.split("/")[0])[0]


def filer(sorter: Sorter, policy: OverwritePolicy) -> Filer:
    return Filer(sorter.sessions, sorter.data, sorter.archive, sorter.quarantine, policy=policy)


def converted(sorter: Sorter) -> None:
    """As the converter leaves a series: complete, its generation converted."""
    with sorter.sessions.begin() as session:
        session.execute(
            update(Series).values(
                completion=Completion.COMPLETE,
                conversion=ConversionState.CONVERTED,
                converted_generation=Series.generation,
            )
        )


def series_state(sorter: Sorter) -> tuple[Completion, int, ConversionState]:
    with sorter.sessions() as session:
        (series,) = session.scalars(select(Series)).all()
        return series.completion, series.generation, series.conversion


def history(sorter: Sorter) -> list[InstanceHistory]:
    with sorter.sessions() as session:
        return list(session.scalars(select(InstanceHistory).order_by(InstanceHistory.id)))


def quarantined(sorter: Sorter) -> dict[bytes, str]:
    """Each copy in quarantine and the reason beside it."""
    return {
        path.read_bytes(): json.loads(path.with_suffix(".json").read_text())["reason"]
        for path in sorter.quarantine.glob("*.dcm")
    }


def filed_bytes(sorter: Sorter) -> bytes:
    (content,) = sorter.archived().values()
    return content


@pytest.mark.parametrize("variant", REFUSED_UNDER_BETTER)
def test_a_worse_copy_is_refused_and_the_good_one_stays(
    sorter: Sorter, slice_: Path, variant: str
) -> None:
    derive, why = REFUSED_UNDER_BETTER[variant]
    assert sorter.filer.file(arrive(slice_, sorter.data)).filed is not None
    converted(sorter)
    before = series_state(sorter)
    worse = derive(slice_)

    outcome = sorter.filer.file(arrive(worse, sorter.data, calling_ae="RESENDER"))

    assert outcome == Outcome(filed=None)
    assert filed_bytes(sorter) == slice_.read_bytes()
    (instance,) = sorter.instances().values()
    assert instance.replacements == 0 and instance.calling_ae == "TESTSCU"
    assert series_state(sorter) == before, "a refused copy converts the series again"
    assert sorter.incoming() == []
    (reason,) = quarantined(sorter).values()
    assert quarantined(sorter) == {worse: reason} and why in reason
    assert history(sorter) == []


def test_a_correction_replaces_and_the_old_copy_is_kept_in_history(
    sorter: Sorter, slice_: Path
) -> None:
    first = sorter.filer.file(arrive(slice_, sorter.data))
    assert first.filed is not None
    converted(sorter)
    (_, generation, _) = series_state(sorter)
    correction = copies.corrected(slice_)
    (old,) = sorter.instances().values()

    outcome = sorter.filer.file(arrive(correction, sorter.data, calling_ae="FIXER"))

    assert outcome.replaced and outcome.filed is not None and outcome.filed.replaced
    assert filed_bytes(sorter) == correction
    assert series_state(sorter) == (Completion.RECEIVING, generation + 1, ConversionState.PENDING)
    (row,) = history(sorter)
    assert (row.old_calling_ae, row.new_calling_ae) == ("TESTSCU", "FIXER")
    assert (row.old_size, row.new_size) == (slice_.stat().st_size, len(correction))
    assert row.old_sha256 == old.sha256 and row.study_instance_uid == first.filed.study_instance_uid
    assert row.kept_path == str(history_path(old.path, old.sha256))
    assert (sorter.data / "history" / row.kept_path).read_bytes() == slice_.read_bytes()
    assert quarantined(sorter) == {}


def test_the_same_data_set_from_another_sender_changes_nothing(
    sorter: Sorter, slice_: Path
) -> None:
    sorter.filer.file(arrive(slice_, sorter.data))
    converted(sorter)
    before = series_state(sorter)

    outcome = sorter.filer.file(arrive(copies.same_data_set(slice_), sorter.data))

    assert outcome.duplicate and not outcome.replaced
    assert filed_bytes(sorter) == slice_.read_bytes()
    assert series_state(sorter) == before
    assert history(sorter) == [] and quarantined(sorter) == {} and sorter.incoming() == []


def test_never_keeps_the_filed_copy_even_against_a_correction(sorter: Sorter, slice_: Path) -> None:
    never = filer(sorter, OverwritePolicy.NEVER)
    never.file(arrive(slice_, sorter.data))
    correction = copies.corrected(slice_)

    assert never.file(arrive(correction, sorter.data)) == Outcome(filed=None)
    assert filed_bytes(sorter) == slice_.read_bytes()
    assert list(quarantined(sorter)) == [correction] and history(sorter) == []
    # The same bytes again are no refusal, whatever the policy.
    assert never.file(arrive(slice_, sorter.data)).duplicate
    assert len(quarantined(sorter)) == 1


def test_always_replaces_even_with_a_copy_without_pixels(sorter: Sorter, slice_: Path) -> None:
    always = filer(sorter, OverwritePolicy.ALWAYS)
    always.file(arrive(slice_, sorter.data))
    worse = copies.without_pixels(slice_)

    assert always.file(arrive(worse, sorter.data)).replaced
    assert filed_bytes(sorter) == worse
    (row,) = history(sorter)
    assert (sorter.data / "history" / row.kept_path).read_bytes() == slice_.read_bytes()
    assert "always" in row.reason


@pytest.mark.parametrize("policy", list(OverwritePolicy))
def test_copies_filed_out_of_order_end_as_filed_in_the_order_received(
    sorter: Sorter, slice_: Path, policy: OverwritePolicy
) -> None:
    """The good copy was received first, the copy without pixels second, but a second sorter
    filed the second one first: the outcome is the one of the order received."""
    good_stamp, worse_stamp = next_stamp(), next_stamp()
    worse = copies.without_pixels(slice_)
    judge = filer(sorter, policy)

    judge.file(arrive(worse, sorter.data, stamp=worse_stamp))
    late = judge.file(arrive(slice_, sorter.data, stamp=good_stamp))

    if policy is OverwritePolicy.ALWAYS:  # the newer copy replaces the older one
        assert late == Outcome(filed=None, duplicate=True)
        assert filed_bytes(sorter) == worse
        kept = slice_.read_bytes()
    else:  # the older, good copy stays; the newer is kept aside
        assert late.replaced
        assert filed_bytes(sorter) == slice_.read_bytes()
        kept = worse
    (row,) = history(sorter)
    assert (sorter.data / "history" / row.kept_path).read_bytes() == kept
    assert quarantined(sorter) == {} and sorter.incoming() == []


def test_two_copies_in_one_batch_are_judged_one_after_the_other(
    sorter: Sorter, slice_: Path
) -> None:
    worse = copies.without_pixels(slice_)
    outcomes = sorter.filer.file_batch([arrive(slice_, sorter.data), arrive(worse, sorter.data)])
    assert outcomes[0].filed is not None and outcomes[1] == Outcome(filed=None)
    assert filed_bytes(sorter) == slice_.read_bytes()
    assert list(quarantined(sorter)) == [worse]


def test_two_sorters_keep_every_good_slice(
    sorter: Sorter, catalog_url: str, testdata: Path
) -> None:
    """A series of good slices, each sent again without its pixel data or cut short; two
    sorters of their own catalog connections file them all at once, in shuffled order."""
    slices = dicom_files(testdata, copies.GE_FMRI.split("/")[0])[:12]
    good = [arrive(s, sorter.data) for s in slices]  # received first
    worse = [
        arrive((copies.without_pixels if i % 2 else copies.cut_short)(s), sorter.data)
        for i, s in enumerate(slices)
    ]
    events = good + worse
    random.Random(7).shuffle(events)
    engines = [open_catalog(catalog_url, writer=True) for _ in range(2)]
    filers = [
        Filer(sessions, sorter.data, sorter.archive, sorter.quarantine) for _, sessions in engines
    ]
    failures: list[BaseException] = []

    def run(filer: Filer, share: list) -> None:
        try:
            for start in range(0, len(share), 3):
                filer.file_batch(share[start : start + 3])
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(f, events[i::2])) for i, f in enumerate(filers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine, _ in engines:
        engine.dispose()

    assert failures == []
    archived = sorted(sorter.archived().values())
    assert archived == sorted(s.read_bytes() for s in slices), "a good slice was replaced"
    assert len(quarantined(sorter)) + len(history(sorter)) == len(slices)
    assert sorter.incoming() == []


def test_an_instance_of_another_lab_is_kept_out_of_the_study(sorter: Sorter, slice_: Path) -> None:
    """The lab is the Referring Physician's: an instance naming another one than the lab its
    study is filed under is not mixed into that lab's study."""
    first = sorter.filer.file(arrive(with_new_uids(slice_, ReferringPhysicianName="SMITH"),
                                     sorter.data))  # fmt: skip
    assert first.filed is not None and first.filed.physician_folder == "SMITH"
    other = with_new_uids(slice_, ReferringPhysicianName="JONES")

    assert sorter.filer.file(arrive(other, sorter.data)) == Outcome(filed=None)
    (reason,) = quarantined(sorter).values()
    assert "another lab (SMITH)" in reason
    assert len(sorter.archived()) == 1


def test_an_instance_naming_no_physician_joins_its_studys_lab(sorter: Sorter, slice_: Path) -> None:
    """Referring Physician is a study's: an instance without it (a derived object, say) is
    filed in the lab its study is filed under, not apart from it."""
    first = sorter.filer.file(arrive(with_new_uids(slice_, ReferringPhysicianName="SMITH"),
                                     sorter.data))  # fmt: skip
    assert first.filed is not None
    second = sorter.filer.file(arrive(with_new_uids(slice_, ReferringPhysicianName=""),
                                      sorter.data))  # fmt: skip

    assert second.filed is not None and second.filed.physician_folder == "SMITH"
    assert not quarantined(sorter)
    assert len(sorter.archived()) == 2


def test_a_copy_does_not_take_an_instance_out_of_another_labs_study(
    sorter: Sorter, slice_: Path
) -> None:
    """A copy of a SOP instance filed in SMITH's study, sent in a new study naming JONES (by
    STOW-RS with JONES's key, say), is refused: SMITH's instance stays where it is."""
    first = with_new_uids(slice_, ReferringPhysicianName="SMITH")
    filed = sorter.filer.file(arrive(first, sorter.data))
    assert filed.filed is not None and filed.filed.physician_folder == "SMITH"
    taken = with_new_uids(BytesIO(first), study=generate_uid(), keep_sop=True,  # type: ignore[arg-type]
                          ReferringPhysicianName="JONES", PatientComments="taken")  # fmt: skip

    assert sorter.filer.file(arrive(taken, sorter.data)) == Outcome(filed=None)
    (reason,) = quarantined(sorter).values()
    assert "another lab (SMITH)" in reason
    assert [path.split("/")[0] for path in sorter.archived()] == ["SMITH"]

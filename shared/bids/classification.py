"""Naming a series by how it was acquired, where its protocol name says nothing.

The sidecar tells the sequence (ScanningSequence, SequenceVariant, MRAcquisitionType), its
timing (TR, TE, TI) and its images (ImageType, echoes, the gradient table); the volume count
tells a time series from a single image. Each rule below is one a physicist would sign:
an inversion-prepared 3D gradient echo is a T1w (MPRAGE, BRAVO), a long-TR long-TE spin echo
a T2w, a spin echo with a long inversion time a FLAIR, a gradient-echo EPI time series a BOLD.
Anything else is a leftover with the reason, as a wrong name in a dataset costs more than a
missing one: the lab can name the protocol ReproIn-style or add a rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .distinct import echo_ranks, tell_apart
from .entities import BidsName
from .series import ConvertedOutput, ConvertedSeries, Naming

# Seconds. A FLAIR nulls the fluid with TI near 2-2.5 s; MPRAGE-like T1w use 0.4-1.2 s.
FLAIR_MIN_TI = 1.5
T2W_MIN_TR, T2W_MIN_TE = 2.0, 0.06
T1W_SPIN_ECHO_MAX_TR, T1W_SPIN_ECHO_MAX_TE = 1.0, 0.03
_LOCALIZER = re.compile(r"locali[sz]er|scout|survey|aahead|3.?plane|tri.?pilot", re.IGNORECASE)
_REST = re.compile(r"(?<![a-z])rest(ing)?(?![a-z])", re.IGNORECASE)
_DIRECTION = re.compile(r"(?<![A-Za-z])(AP|PA|LR|RL|SI|IS)(?![A-Za-z])")
_MP2RAGE = re.compile(r"mp2rage|(?<![a-z])(inv[12]|uni|t1map)(?![a-z])", re.IGNORECASE)
_ASL = re.compile(r"(?<![a-z])p?c?asl(?![a-z])", re.IGNORECASE)
_EPI_FIELD_MAP = re.compile(r"fmap|field.?map|topup|sefm|pepolar|blip", re.IGNORECASE)
_GRE_FIELD_MAP = re.compile(r"fmap|field.?map|b0.?map|fieldmap", re.IGNORECASE)
_SIEMENS_FIELD_MAP_SEQUENCE = re.compile(r"^\*?fm\d")
NEEDS_TASK = (
    "a BOLD series needs a task name: name the protocol ReproIn-style "
    "(func-bold_task-<name>) or add a rule"
)


@dataclass(frozen=True)
class _Found:
    names: list[BidsName]
    how: str


# A kind of acquisition: its names, a leftover's reason, or None where it is not this kind.
_Kind = Callable[[ConvertedSeries], _Found | str | None]


def classify(series: ConvertedSeries) -> Naming:
    """The names the acquisition itself gives the series' outputs, or a leftover."""
    why = _not_for_the_dataset(series)
    if why:
        return Naming.leftover(why)
    kinds: tuple[_Kind, ...] = (_diffusion, _gradient_echo_field_map, _epi, _anatomical)
    for kind in kinds:
        found = kind(series)
        if found is None:
            continue
        if isinstance(found, str):
            return Naming.leftover(found)
        distinct = tell_apart(found.names, series.outputs)
        if isinstance(distinct, str):
            return Naming.leftover(f"{found.how}, but {distinct}")
        return Naming(distinct, f"classified: {found.how}")
    return Naming.leftover("no rule of dcmdb's classification fits: add a rule")


def _not_for_the_dataset(series: ConvertedSeries) -> str:
    if not series.outputs:
        return "no converted outputs"
    modality = (series.modality or series.outputs[0].text("Modality")).upper()
    if modality != "MR":
        return (
            f"modality {modality or 'unknown'}: the BIDS dataset is named for MR "
            "(anat, func, dwi, fmap, perf); add a rule to place it anyway"
        )
    for text in (series.description, series.protocol):
        if _LOCALIZER.search(text):
            return f"a localizer ({text!r}): localizers are not part of the BIDS dataset"
    for output in series.outputs:
        if output.image_type[:1] == ("DERIVED",):
            kind = "\\".join(output.image_type)
            return (
                f"derived images (ImageType {kind}) in {output.nifti}: the dataset holds what "
                "the scanner acquired; add a rule to place them anyway"
            )
    return ""


def _diffusion(series: ConvertedSeries) -> _Found | str | None:
    with_table = [o.diffusion for o in series.outputs]
    if not any(with_table):
        return None
    if not all(with_table):
        return "some outputs have a gradient table and some not: add a rule for each"
    names = [BidsName("dwi", "dwi", _direction(series))] * len(series.outputs)
    return _Found(names, "diffusion-weighted, with a gradient table (dwi)")


def _gradient_echo_field_map(series: ConvertedSeries) -> _Found | str | None:
    outputs = series.outputs
    if not all(_is_gradient_echo(o) and o.volumes == 1 for o in outputs):
        return None
    if any(_is_field_map_image(o) for o in outputs):
        # A vendor's own field map (Philips B0 map in Hz) beside its magnitude.
        suffixes = ["fieldmap" if _is_field_map_image(o) else "magnitude" for o in outputs]
        if sorted(suffixes) != ["fieldmap", "magnitude"]:
            return "a field map in Hz with other than one magnitude image: add a rule"
        return _Found(
            [BidsName("fmap", s) for s in suffixes], "B0 field map in Hz and its magnitude"
        )
    if any(
        o.part == "phase" and "EchoTime1" in o.sidecar and "EchoTime2" in o.sidecar for o in outputs
    ):
        # dcm2niix writes EchoTime1/2 only for a phase difference image.
        phases = [o for o in outputs if o.part == "phase"]
        if len(phases) != 1:
            return "more than one phase difference image in one series: add a rule"
        suffixes = ["phasediff" if o.part == "phase" else "magnitude" for o in outputs]
        return _Found(
            [BidsName("fmap", s) for s in suffixes],
            "gradient-echo phase difference, from two echo times (phasediff)",
        )
    if not _says_field_map(series):
        return None
    ranks = echo_ranks(outputs)
    parts = sorted(o.part for o in outputs)
    if ranks is None or max(ranks) != 2 or parts not in (["mag"] * 2, ["mag"] * 2 + ["phase"] * 2):
        return (
            "a gradient-echo field map that is not two echoes of magnitude (and phase) "
            "images: add a rule"
        )
    suffixes = ["phase" if o.part == "phase" else "magnitude" for o in outputs]
    return _Found(
        [BidsName("fmap", s) for s in suffixes],
        "dual-echo gradient-echo field map (magnitude1/magnitude2"
        + (", phase1/phase2)" if "phase" in parts else ")"),
    )


def _epi(series: ConvertedSeries) -> _Found | str | None:
    outputs = series.outputs
    if not any("EP" in _codes(o, "ScanningSequence") for o in outputs):
        return None
    if not all("EP" in _codes(o, "ScanningSequence") for o in outputs):
        return "EPI and other images in one series: add a rule for each"
    texts = f"{series.description} {series.protocol}"
    if _ASL.search(texts) or any("ASL" in o.image_type for o in outputs):
        return "an ASL series: name the protocol ReproIn-style (perf-asl) or add a rule"
    if any(_is_spin_echo_epi(o) for o in outputs):
        return _spin_echo_epi(series)
    volumes = {o.volumes for o in outputs}
    if volumes == {1}:
        return (
            "a single gradient-echo EPI volume (a single-band reference or a test): name the "
            "protocol ReproIn-style (func-sbref_task-<name>) or add a rule"
        )
    found_in = next((t for t in (series.description, series.protocol) if _REST.search(t)), None)
    if found_in is None:
        return NEEDS_TASK
    names = [BidsName("func", "bold", (("task", "rest"),))] * len(outputs)
    return _Found(names, f"gradient-echo EPI time series (bold), task 'rest' from {found_in!r}")


def _spin_echo_epi(series: ConvertedSeries) -> _Found | str:
    direction = _direction(series)
    if not _EPI_FIELD_MAP.search(f"{series.description} {series.protocol}") or not direction:
        return (
            "spin-echo EPI without a gradient table (a field map of a blip pair, or b=0 "
            "images?): name the protocol ReproIn-style (fmap-epi_dir-<AP|PA|...>) or add a rule"
        )
    if any(o.volumes > 3 for o in series.outputs):
        return "a spin-echo EPI field map of more than 3 volumes: add a rule"
    names = [BidsName("fmap", "epi", direction)] * len(series.outputs)
    return _Found(names, "spin-echo EPI field map, direction from the description (epi)")


def _anatomical(series: ConvertedSeries) -> _Found | str:
    first = series.outputs[0]
    volumes = max(o.volumes for o in series.outputs)
    if volumes > 1:
        return f"a time series of {volumes} volumes that is not EPI: add a rule"
    if (
        _MP2RAGE.search(f"{series.description} {series.protocol}")
        or "mp2rage" in first.text("PulseSequenceDetails").lower()
    ):
        # Its first inversion looks like an MPRAGE by every parameter, but is no T1w.
        return (
            "an MP2RAGE image: name the protocol ReproIn-style (anat-MP2RAGE_inv-<1|2>, "
            "anat-UNIT1) or add a rule"
        )
    scanning = _codes(first, "ScanningSequence")
    if not scanning:
        return "the sidecar does not say how the images were acquired (no ScanningSequence)"
    tr, ti = first.number("RepetitionTime"), first.number("InversionTime")
    times = [t for t in (o.number("EchoTime") for o in series.outputs) if t is not None]
    te = min(times) if times else None
    inverted = "IR" in scanning or (ti is not None and ti > 0)
    three_d = first.text("MRAcquisitionType") == "3D"
    params = f"ScanningSequence {first.text('ScanningSequence')}, {_timing(tr, te, ti)}"
    suffix, how = "", ""
    if "GR" in scanning and "SE" not in scanning:
        if three_d and inverted and (ti is None or ti < FLAIR_MIN_TI):
            suffix, how = "T1w", "3D inversion-recovery gradient echo (T1w)"
    elif "SE" in scanning and inverted:
        if ti is not None and ti >= FLAIR_MIN_TI:
            suffix, how = "FLAIR", "spin echo with a long inversion time (FLAIR)"
    elif "SE" in scanning and tr is not None and te is not None:
        if tr >= T2W_MIN_TR and te >= T2W_MIN_TE:
            suffix, how = "T2w", "spin echo with long TR and TE (T2w)"
        elif tr <= T1W_SPIN_ECHO_MAX_TR and te <= T1W_SPIN_ECHO_MAX_TE:
            suffix, how = "T1w", "spin echo with short TR and TE (T1w)"
    if not suffix:
        return (
            f"an image whose contrast its parameters do not tell ({params}): name the "
            "protocol ReproIn-style (anat-<T1w|T2w|FLAIR|...>) or add a rule"
        )
    return _Found([BidsName("anat", suffix)] * len(series.outputs), how)


def _codes(output: ConvertedOutput, key: str) -> set[str]:
    return {code for code in output.text(key).upper().split("\\") if code}


def _is_gradient_echo(output: ConvertedOutput) -> bool:
    scanning = _codes(output, "ScanningSequence")
    return "GR" in scanning and not scanning & {"EP", "SE", "IR"}


def _is_spin_echo_epi(output: ConvertedOutput) -> bool:
    return "SE" in _codes(output, "ScanningSequence") or "epse" in output.text("SequenceName")


def _is_field_map_image(output: ConvertedOutput) -> bool:
    return any(value.startswith("FIELDMAP") for value in output.image_type)


def _says_field_map(series: ConvertedSeries) -> bool:
    """Something besides two echoes says field map: two short echoes alone are also a
    Dixon or a dual-echo anatomical."""
    if _GRE_FIELD_MAP.search(f"{series.description} {series.protocol}"):
        return True
    for output in series.outputs:
        if "PHASE MAP" in output.image_type:  # Philips' name for a field map's phase
            return True
        if _SIEMENS_FIELD_MAP_SEQUENCE.match(output.text("SequenceName")):
            return True
    return False


def _direction(series: ConvertedSeries) -> tuple[tuple[str, str], ...]:
    """`dir-<X>` where the description or protocol name carries one phase-encoding
    direction as a word of its own (`DWI_dir80_PA`); nothing where none or several."""
    found = set(_DIRECTION.findall(f"{series.description} {series.protocol}"))
    return (("dir", found.pop()),) if len(found) == 1 else ()


def _timing(tr: float | None, te: float | None, ti: float | None) -> str:
    def ms(value: float | None) -> str:
        return "none" if value is None else f"{value * 1000:g} ms"

    return f"TR {ms(tr)}, TE {ms(te)}, TI {ms(ti)}"

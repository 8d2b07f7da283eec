"""ReproIn protocol names, as heudiconv's `reproin` heuristic reads them.

A lab that names its protocols at the console
`<datatype>[-<suffix>][_ses-X][_task-X][_acq-X][_dir-X][_run-X][_<entity>-X...][__<comment>]`
(e.g. `func-bold_task-rest_run-01`) has said what each series is; this module takes it at its
word. As heudiconv does: the ProtocolName is read first, then the SeriesDescription; a
`PREFIX:` of capitals and Philips' `WIP ` are dropped, as is everything after `__` (heudiconv's
own `__dup-01` marks among it); func defaults to bold and dwi to dwi; a field map without a
suffix takes it from the image type (magnitude, phasediff; epi where a `dir` is given or the
image is a diffusion one); task, acq, run, dir and ses values lose `_`, `-` and punctuation;
runs are written with two digits (`run-1` becomes `run-01`); a func or dwi series whose
description ends in `_SBRef` (Siemens' single-band reference, saved under the protocol's
name) is an sbref.

Where dcmdb differs: `ses-` is ignored (dcmdb labels sessions itself); `run+`/`run=`
(counters across series) are left to the dataset writer; a func series without a task, or a
name BIDS would not accept, is a leftover with the reason instead of `task-UNKNOWN`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .distinct import tell_apart
from .entities import ENTITY_ORDER, BidsName, NotABidsName
from .series import ConvertedOutput, ConvertedSeries, Naming

_REPROIN_DATATYPES = frozenset({"anat", "func", "dwi", "fmap", "perf", "behav"})
_DEFAULT_SUFFIX = {"func": "bold", "dwi": "dwi"}
# heudiconv's sanitize_str: what it deletes from the values of these keys.
_SANITIZED_KEYS = frozenset({"ses", "run", "task", "acq", "dir"})
_SANITIZED_CHARACTERS = str.maketrans("", "", "#!@$%^&.,:;_-")
# The field-map suffixes of BIDS; another label (`fmap-gre`) is read as no suffix.
_FMAP_SUFFIXES = frozenset(
    {"magnitude", "magnitude1", "magnitude2", "phasediff", "phase1", "phase2", "fieldmap", "epi"}
    | {"TB1DAM", "TB1EPI", "TB1AFI", "TB1TFL", "TB1RFM", "TB1SRGE", "TB1map", "RB1map"}
)


@dataclass(frozen=True)
class ReproinName:
    """A protocol name read the ReproIn way; `problems` make it unusable, `notes` do not."""

    text: str  # as written at the console
    datatype: str
    suffix: str | None
    entities: tuple[tuple[str, str], ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def parse(text: str) -> ReproinName | None:
    """The ReproIn reading of `text`, or None where it does not start with a datatype."""
    spec = re.sub(r"^WIP ", "", re.sub(r"^[A-Z]*:", "", text.strip(" ")))
    tokens = spec.split("__", 1)[0].split("_")
    if tokens[0] == "scout":
        tokens[0] = "anat-scout"
    if tokens[0] == "bids":
        tokens = tokens[1:] or [""]
    datatype, _, suffix = tokens[0].partition("-")
    if datatype not in _REPROIN_DATATYPES:
        return None
    entities: dict[str, str] = {}
    problems: list[str] = []
    notes: list[str] = []
    for token in tokens[1:]:
        key, dash, value = token.partition("-")
        if not dash and key[-1:] in ("+", "="):
            key, value = key[:-1], key[-1]
        elif not dash:
            problems.append(f"{token!r} is not a <key>-<value> pair")
            continue
        value = value.replace("_", "X").replace("-", "X")
        if key in _SANITIZED_KEYS:
            value = value.translate(_SANITIZED_CHARACTERS)
        if key == "ses":
            notes.append(f"{token} ignored: dcmdb labels sessions itself")
        elif key == "run" and value in ("+", "="):
            notes.append(f"{token} left to the dataset writer, which counts runs across series")
        elif key == "run" and not value.isdigit():
            problems.append(f"run {value!r} is not a number")
        elif key not in ENTITY_ORDER or key == "sub":
            problems.append(f"{key!r} is not a BIDS entity")
        elif key in entities:
            problems.append(f"{key!r} is given twice")
        else:
            entities[key] = f"{int(value):02d}" if key == "run" else value
    if datatype == "fmap" and suffix and suffix not in _FMAP_SUFFIXES:
        notes.append(f"{suffix!r} is not a BIDS field-map suffix: the image type gives it")
    return ReproinName(
        text, datatype, suffix or None, tuple(entities.items()), tuple(problems), tuple(notes)
    )


def find(series: ConvertedSeries) -> tuple[str, ReproinName] | None:
    """The first of ProtocolName and SeriesDescription that is a ReproIn name, and which."""
    for field, text in (
        ("protocol name", series.protocol),
        ("series description", series.description),
    ):
        name = parse(text)
        if name is not None:
            return field, name
    return None


def name_series(series: ConvertedSeries) -> Naming | None:
    """The names the series' ReproIn name gives, a leftover where it cannot be honoured,
    or None where the series has no ReproIn name."""
    found = find(series)
    if found is None:
        return None
    field, spec = found
    said = f"ReproIn {field} {spec.text!r}"
    why = _unusable(spec)
    if why:
        return Naming.leftover(f"{said}: {why}")
    suffixes = _suffixes(spec, series.outputs)
    if spec.datatype in ("func", "dwi") and series.description.upper().endswith("_SBREF"):
        # Siemens' single-band reference: its own series, under the protocol's name.
        suffixes = ["sbref"] * len(suffixes)
        said += f", a single-band reference ({series.description!r})"
    try:
        names = [BidsName(spec.datatype, suffix, spec.entities) for suffix in suffixes]
    except NotABidsName as error:
        return Naming.leftover(f"{said}: not a BIDS name: {error}")
    distinct = tell_apart(names, series.outputs)
    if isinstance(distinct, str):
        return Naming.leftover(f"{said}: {distinct}")
    return Naming(distinct, "; ".join([said, *spec.notes]))


def _unusable(spec: ReproinName) -> str:
    if spec.problems:
        return "; ".join(spec.problems)
    if spec.datatype == "behav":
        return "behav holds no images in BIDS"
    if spec.datatype == "anat" and spec.suffix is not None and spec.suffix.startswith("scout"):
        return "a scout: localizers are not part of the BIDS dataset"
    if spec.datatype in ("anat", "perf") and spec.suffix is None:
        examples = "anat-T1w, anat-T2w, anat-FLAIR" if spec.datatype == "anat" else "perf-asl"
        return f"{spec.datatype} needs its suffix in the name ({examples})"
    if spec.datatype == "func" and not dict(spec.entities).get("task"):
        return "a func series needs a task: name it func-bold_task-<name>"
    return ""


def _suffixes(spec: ReproinName, outputs: tuple[ConvertedOutput, ...]) -> list[str]:
    """One suffix per output: the given one, a datatype's default, or for field maps the
    one the image type says (heudiconv's rule)."""
    if spec.datatype != "fmap":
        suffix = spec.suffix or _DEFAULT_SUFFIX[spec.datatype]
        return [suffix] * len(outputs)
    if spec.suffix == "fieldmap":
        return ["fieldmap" if _is_field_map(o) else "magnitude" for o in outputs]
    if spec.suffix in _FMAP_SUFFIXES:
        return [spec.suffix] * len(outputs)
    phases = sum(1 for o in outputs if o.part == "phase")
    magnitude = "epi" if dict(spec.entities).get("dir") else "magnitude"
    return [_fmap_suffix(o, phases, magnitude) for o in outputs]


def _fmap_suffix(output: ConvertedOutput, phases: int, magnitude: str) -> str:
    if output.diffusion:
        return "epi"  # heudiconv: diffusion images in fmap are the EPIs of a blip pair
    if output.part == "phase":
        return "phasediff" if phases == 1 else "phase"
    return magnitude


def _is_field_map(output: ConvertedOutput) -> bool:
    return any(value.startswith("FIELDMAP") for value in output.image_type)

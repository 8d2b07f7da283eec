"""Telling apart the outputs of one series that would get the same name.

One series can hold several echoes, a magnitude and a phase, or both (dcm2niix writes one
file each). BIDS tells these apart by `echo-<n>` and `part-<mag|phase|real|imag>`, and a
field map's magnitudes and phases by their suffix (magnitude1/magnitude2, phase1/phase2).
Only what differs within a group of equal names is added, so a single-echo magnitude
series keeps its plain name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .entities import BidsName
from .series import ConvertedOutput

# Field-map suffixes that BIDS numbers by echo instead of an entity.
_NUMBERED_BY_ECHO = {"magnitude": "magnitude", "phase": "phase"}


def tell_apart(
    names: Sequence[BidsName], outputs: Sequence[ConvertedOutput]
) -> tuple[BidsName, ...] | str:
    """The names made distinct, or why they cannot be (for a leftover).

    A phase (real, imaginary) image is marked `part-` even where it is alone in its series:
    scanners save the phase of a BOLD or anatomical series as a series of its own, under
    the same protocol name, and it must not pass for the magnitude. Beside a phase, the
    magnitude is `part-mag`, as BIDS asks."""
    complex_parts = any(
        n.datatype != "fmap" and o.part != "mag" for n, o in zip(names, outputs, strict=True)
    )
    result = [
        name.with_entity("part", output.part) if complex_parts and name.datatype != "fmap" else name
        for name, output in zip(names, outputs, strict=True)
    ]
    for group in _groups(result):
        _distinguish(result, group, outputs)
    for group in _groups(result):
        files = ", ".join(outputs[i].nifti for i in group)
        return (
            f"outputs {files} would all be named {result[group[0]].suffix!r} "
            f"({result[group[0]].datatype}) and neither their echo nor their magnitude/phase "
            "tells them apart: add a rule for each"
        )
    return tuple(result)


def echo_ranks(outputs: Sequence[ConvertedOutput]) -> list[int] | None:
    """Each output's echo as 1, 2, ...: by EchoNumber, else by EchoTime; None where the
    outputs share one echo (or say nothing of it)."""
    numbers = [o.echo_number for o in outputs]
    keys: list[float]
    if all(n is not None for n in numbers):
        keys = [float(n) for n in numbers if n is not None]
    else:
        times = [o.number("EchoTime") for o in outputs]
        if any(t is None for t in times):
            return None
        keys = [t for t in times if t is not None]
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        return None
    return [distinct.index(k) + 1 for k in keys]


def _groups(names: Sequence[BidsName]) -> list[list[int]]:
    by_name: dict[BidsName, list[int]] = defaultdict(list)
    for index, name in enumerate(names):
        by_name[name].append(index)
    return [group for group in by_name.values() if len(group) > 1]


def _distinguish(
    names: list[BidsName], group: list[int], outputs: Sequence[ConvertedOutput]
) -> None:
    members = [outputs[i] for i in group]
    ranks = echo_ranks(members)
    first = names[group[0]]
    if first.datatype == "fmap":
        # BIDS allows neither echo nor part on field maps: only numbered suffixes.
        if (
            first.suffix in _NUMBERED_BY_ECHO
            and ranks is not None
            and len(set(ranks)) == len(group)
        ):
            for index, rank in zip(group, ranks, strict=True):
                names[index] = names[index].with_suffix(f"{first.suffix}{rank}")
        return
    if ranks is not None:
        # The scanner's own echo number where it has one: it is what the lab reads on the console.
        numbers = [o.echo_number for o in members]
        echoes = numbers if all(numbers) else ranks
        for index, echo in zip(group, echoes, strict=True):
            names[index] = names[index].with_entity("echo", str(echo))
    parts = [o.part for o in members]
    if len(set(parts)) > 1:
        for index, part in zip(group, parts, strict=True):
            names[index] = names[index].with_entity("part", part)

"""Which BIDS name each output of one converted series gets.

In the order a lab expects to be obeyed: its rules file first (it overrides everything),
then the ReproIn protocol name (what the lab said at the console), then the classification
of the acquisition itself. A series gets names for all its outputs or none: a leftover's
`how` says why.

The rules are tried output by output. Where only some outputs of a series match a rule (the
magnitude of a field map, say), the others take the names ReproIn or the classification
gives the whole series; if those leave the series over, so is the series, as its files would
otherwise go to the dataset half named. Two outputs may not end with one name.
"""

from __future__ import annotations

from . import classification, reproin
from .distinct import tell_apart
from .entities import BidsName
from .rules import Rules
from .series import ConvertedSeries, Naming


def name_series(series: ConvertedSeries, rules: Rules) -> Naming:
    """The names of `series`' outputs (same order), or a leftover and why."""
    if not series.outputs:
        return Naming.leftover("no converted outputs")
    matches = [rules.match(series, output) for output in series.outputs]
    if all(match is None for match in matches):
        return _without_rules(series)
    unmatched = [o.nifti for o, m in zip(series.outputs, matches, strict=True) if m is None]
    others = _without_rules(series) if unmatched else None
    if others is not None and others.names is None:
        return Naming.leftover(
            f"no rule of the rules file matches {', '.join(unmatched)}, and {others.how}"
        )
    fallback = others.names if others is not None and others.names else (None,) * len(matches)
    names: list[BidsName] = []
    used: list[str] = []
    for output, match, other in zip(series.outputs, matches, fallback, strict=True):
        if match is not None:
            names.append(match[0])
            used.append(f"descriptions[{match[1]}]")
            if len(series.outputs) > 1:
                used[-1] += f" ({output.nifti})"
        elif other is not None:
            names.append(other)
    distinct = tell_apart(names, series.outputs)
    if isinstance(distinct, str):
        return Naming.leftover(f"rules file: {distinct}")
    how = "rules file: " + ", ".join(used)
    if others is not None:
        how += f"; the other outputs by {others.how}"
    return Naming(distinct, how)


def _without_rules(series: ConvertedSeries) -> Naming:
    return reproin.name_series(series) or classification.classify(series)

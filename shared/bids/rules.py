"""A lab's own naming rules, in the shape of a dcm2bids configuration file.

```json
{"descriptions": [
  {"datatype": "anat", "suffix": "T1w",
   "criteria": {"SeriesDescription": "*mprage*", "EchoTime": 0.00226,
                "ImageType": ["ORIGINAL", "PRIMARY", "M", "*", "*", "MAGNITUDE"]},
   "custom_entities": "acq-highres"}
]}
```

Each description names the outputs whose sidecar meets all its criteria; the first that
matches wins. As in dcm2bids: strings are shell globs, case-sensitive unless the file says
`"case_sensitive": false`, matched against the value's text (`"EchoNumber": "1"` matches 1);
a list matches a list of the same length element by element; `{"any": [...]}` matches where
one of its patterns does. Beyond dcm2bids: numbers match numbers (floats within a millionth,
as sidecars round), `{"gt": x, "lt": y}` (and `gte`, `lte`) bound a number, and `volumes`
and `diffusion` are criteria of the converted output. A field the sidecar lacks matches
nothing. dcm2bids' `id` and `sidecar_changes` are read and kept.

Mistakes are refused when the file is read, with the description and field named, so a lab
finds them before a series is named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .entities import BidsName, NotABidsName
from .series import ConvertedOutput, ConvertedSeries

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda value, bound: value > bound,
    "gte": lambda value, bound: value >= bound,
    "lt": lambda value, bound: value < bound,
    "lte": lambda value, bound: value <= bound,
}
_DESCRIPTION_KEYS = frozenset(
    {"datatype", "suffix", "criteria", "custom_entities", "id", "sidecar_changes"}
)
_FILE_KEYS = frozenset({"descriptions", "case_sensitive"})

Test = Callable[[Any], bool]


class RulesError(ValueError):
    """A rules file dcmdb cannot use; the message says where and why."""


@dataclass(frozen=True)
class Rule:
    index: int  # in the file's descriptions, from 0
    name: BidsName
    criteria: tuple[tuple[str, Test], ...]
    id: str | None = None
    sidecar_changes: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, values: Mapping[str, Any]) -> bool:
        return all(key in values and test(values[key]) for key, test in self.criteria)


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, data: object) -> Rules:
        if not isinstance(data, dict):
            raise RulesError("a rules file is a JSON object with a 'descriptions' list")
        unknown = sorted(set(data) - _FILE_KEYS)
        if unknown:
            raise RulesError(f"unknown key(s) {unknown}: a rules file has {sorted(_FILE_KEYS)}")
        descriptions = data.get("descriptions")
        if not isinstance(descriptions, list):
            raise RulesError("'descriptions' must be a list of descriptions")
        case_sensitive = data.get("case_sensitive", True)
        if not isinstance(case_sensitive, bool):
            raise RulesError("'case_sensitive' must be true or false")
        return cls(tuple(_rule(i, d, case_sensitive) for i, d in enumerate(descriptions)))

    @classmethod
    def load(cls, path: Path) -> Rules:
        """The rules in `path`; none where the lab has written no file."""
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RulesError(f"{Path(path).name} is not JSON in UTF-8: {error}") from None
        return cls.parse(data)

    def match(
        self, series: ConvertedSeries, output: ConvertedOutput
    ) -> tuple[BidsName, int] | None:
        """The name the first matching description gives `output`, and its index."""
        values = criteria_values(series, output)
        for rule in self.rules:
            if rule.matches(values):
                return rule.name, rule.index
        return None


def criteria_values(series: ConvertedSeries, output: ConvertedOutput) -> dict[str, Any]:
    """What criteria are matched against: the sidecar, the series' own fields as the
    catalog holds them, and the output's volume count and gradient table."""
    values = dict(output.sidecar)
    own = {
        "SeriesDescription": series.description,
        "ProtocolName": series.protocol,
        "SeriesNumber": series.series_number,
        "Modality": series.modality,
    }
    values.update({key: value for key, value in own.items() if value not in ("", None)})
    values["volumes"] = output.volumes
    values["diffusion"] = output.diffusion
    return values


def _rule(index: int, description: object, case_sensitive: bool) -> Rule:
    where = f"descriptions[{index}]"
    if not isinstance(description, dict):
        raise RulesError(f"{where}: a description is a JSON object")
    unknown = sorted(set(description) - _DESCRIPTION_KEYS)
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {unknown}; known: {sorted(_DESCRIPTION_KEYS)}")
    for key in ("datatype", "suffix"):
        if not isinstance(description.get(key), str):
            raise RulesError(f"{where}.{key}: required, a string")
    criteria = description.get("criteria")
    if not isinstance(criteria, dict) or not criteria:
        raise RulesError(f"{where}.criteria: required, an object naming at least one field")
    tests = tuple(
        (str(key), _test(value, f"{where}.criteria.{key}", case_sensitive))
        for key, value in criteria.items()
    )
    entities = _entities(description.get("custom_entities", ()), f"{where}.custom_entities")
    try:
        name = BidsName(description["datatype"], description["suffix"], entities)
    except NotABidsName as error:
        raise RulesError(f"{where}: not a BIDS name: {error}") from None
    rule_id = description.get("id")
    if rule_id is not None and not isinstance(rule_id, str):
        raise RulesError(f"{where}.id: a string")
    changes = description.get("sidecar_changes", {})
    if not isinstance(changes, dict):
        raise RulesError(f"{where}.sidecar_changes: an object")
    return Rule(index, name, tests, rule_id, changes)


def _entities(value: object, where: str) -> tuple[tuple[str, str], ...]:
    """`"acq-highres_run-2"`, `["acq-highres", "run-2"]` or `{"acq": "highres", "run": 2}`."""
    if isinstance(value, dict):
        pairs = [(str(k), v) for k, v in value.items()]
        for key, item in pairs:
            if not isinstance(item, str | int) or isinstance(item, bool):
                raise RulesError(f"{where}.{key}: a string or a number")
        return tuple((key, str(item)) for key, item in pairs)
    if isinstance(value, str):
        value = value.split("_") if value else []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"{where}: 'key-value_key-value', a list of 'key-value' or an object")
    entities = []
    for item in value:
        key, dash, label = item.partition("-")
        if not dash:
            raise RulesError(f"{where}: {item!r} is not <key>-<value>")
        entities.append((key, label))
    return tuple(entities)


def _test(pattern: object, where: str, case_sensitive: bool) -> Test:
    if isinstance(pattern, dict):
        return _test_of_object(pattern, where, case_sensitive)
    if isinstance(pattern, list):
        if not pattern:
            raise RulesError(f"{where}: an empty list matches nothing")
        items = [_scalar_test(p, f"{where}[{i}]", case_sensitive) for i, p in enumerate(pattern)]
        return lambda value: (
            isinstance(value, list)
            and len(value) == len(items)
            and all(test(v) for test, v in zip(items, value, strict=True))
        )
    return _scalar_test(pattern, where, case_sensitive)


def _test_of_object(pattern: dict[str, Any], where: str, case_sensitive: bool) -> Test:
    if set(pattern) == {"any"}:
        alternatives = pattern["any"]
        if not isinstance(alternatives, list) or not alternatives:
            raise RulesError(f"{where}.any: a non-empty list of patterns")
        tests = [_test(p, f"{where}.any[{i}]", case_sensitive) for i, p in enumerate(alternatives)]
        return lambda value: any(test(value) for test in tests)
    unknown = sorted(set(pattern) - set(_COMPARISONS))
    if unknown or not pattern:
        raise RulesError(
            f"{where}: {unknown or '{}'} not understood; an object is {{'any': [...]}} "
            f"or bounds among {sorted(_COMPARISONS)}"
        )
    bounds = []
    for key, bound in pattern.items():
        if not _is_number(bound):
            raise RulesError(f"{where}.{key}: {bound!r} is not a number")
        bounds.append((_COMPARISONS[key], float(bound)))
    return lambda value: _is_number(value) and all(c(float(value), b) for c, b in bounds)


def _scalar_test(pattern: object, where: str, case_sensitive: bool) -> Test:
    if isinstance(pattern, bool):
        return lambda value: isinstance(value, bool) and value is pattern
    if _is_number(pattern):
        number = float(pattern)  # type: ignore[arg-type]
        return lambda value: (
            _is_number(value) and math.isclose(float(value), number, rel_tol=1e-6, abs_tol=1e-12)
        )
    if isinstance(pattern, str):
        glob = pattern if case_sensitive else pattern.lower()

        def matches(value: object) -> bool:
            if value is None or isinstance(value, list | dict):
                return False
            text = str(value) if case_sensitive else str(value).lower()
            return fnmatchcase(text, glob)

        return matches
    raise RulesError(
        f"{where}: {pattern!r} is not a pattern (a string, a number, true/false, a list, "
        "{'any': [...]} or bounds such as {'gt': 1})"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

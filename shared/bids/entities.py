"""A BIDS name: datatype, suffix and entities, and the file name they make."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The order of entities in a file name (BIDS, appendix "Entity table").
ENTITY_ORDER = (
    "sub",
    "ses",
    "task",
    "acq",
    "ce",
    "rec",
    "dir",
    "run",
    "mod",
    "echo",
    "flip",
    "inv",
    "mt",
    "part",
    "chunk",
)
DATATYPES = frozenset({"anat", "func", "dwi", "fmap", "perf"})
# A label is letters and digits only; an index (run, echo, ...) digits only.
LABEL = re.compile(r"[A-Za-z0-9]+")
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "chunk"})


class NotABidsName(ValueError):
    """A datatype, suffix or entity BIDS does not allow."""


@dataclass(frozen=True)
class BidsName:
    """Where one NIfTI goes in a session: `<datatype>/sub-X_ses-Y[_entities]_<suffix>`."""

    datatype: str  # anat, func, dwi, fmap, perf
    suffix: str  # T1w, bold, dwi, magnitude1, phasediff, epi, ...
    entities: tuple[tuple[str, str], ...] = field(default=())  # without sub and ses

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise NotABidsName(f"datatype {self.datatype!r} is not one of {sorted(DATATYPES)}")
        if not LABEL.fullmatch(self.suffix):
            raise NotABidsName(f"suffix {self.suffix!r} is not letters and digits")
        for key, value in self.entities:
            if key not in ENTITY_ORDER or key in ("sub", "ses"):
                raise NotABidsName(f"entity {key!r} is not one BIDS names files by")
            if not LABEL.fullmatch(value) or (key in INDEX_ENTITIES and not value.isdigit()):
                raise NotABidsName(f"{key}-{value}: not a BIDS {key} value")
        ordered = tuple(sorted(dict(self.entities).items(), key=lambda e: ENTITY_ORDER.index(e[0])))
        object.__setattr__(self, "entities", ordered)

    def entity(self, key: str) -> str | None:
        return dict(self.entities).get(key)

    def with_entity(self, key: str, value: str) -> BidsName:
        return BidsName(self.datatype, self.suffix, ((*dict(self.entities).items(), (key, value))))

    def with_suffix(self, suffix: str) -> BidsName:
        return BidsName(self.datatype, suffix, self.entities)

    def stem(self, subject: str, session: str) -> str:
        """`sub-<subject>_ses-<session>[_key-value...]_<suffix>`, without extension."""
        parts = [f"sub-{subject}", f"ses-{session}"]
        parts += [f"{key}-{value}" for key, value in self.entities]
        return "_".join([*parts, self.suffix])

    def path(self, subject: str, session: str) -> str:
        """Relative to the dataset: `sub-X/ses-Y/<datatype>/<stem>` (add the extension)."""
        return f"sub-{subject}/ses-{session}/{self.datatype}/{self.stem(subject, session)}"

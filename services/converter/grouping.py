"""Splitting the images of one series into the volumes they make.

One SeriesInstanceUID may hold several series numbers, echoes, magnitude and phase images,
or stacks in several orientations. Each combination is a volume of its own (as dcm2niix
writes them), named `<base>` plus suffixes in the spirit of dcm2niix's: `_<SeriesNumber>`
when the series numbers differ, `_e<n>` for echoes, `_ph`/`_real`/`_imaginary` for complex
components and `_i<first InstanceNumber>` for stacks of other orientation or matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .instances import Instance, as_float, as_int, as_list, as_text, private_value

MAGNITUDE, PHASE, REAL, IMAGINARY = "magnitude", "phase", "real", "imaginary"
_COMPONENT_SUFFIX = {MAGNITUDE: "", PHASE: "_ph", REAL: "_real", IMAGINARY: "_imaginary"}
_COMPONENT_ORDER = {MAGNITUDE: 0, PHASE: 1, REAL: 2, IMAGINARY: 3}
_GE_COMPONENTS = {0: MAGNITUDE, 1: PHASE, 2: REAL, 3: IMAGINARY}
_ORIENTATION_TOLERANCE = 1e-3

EchoKey = tuple[int | None, float | None]
Geometry = tuple[int | None, int | None, tuple[float, ...], int]


@dataclass(frozen=True)
class Volume:
    """Images that make one output (or, for multi-frame objects, one dcm2niix run)."""

    instances: tuple[Instance, ...]
    suffix: str
    multiframe: bool

    @property
    def first(self) -> Instance:
        return self.instances[0]


@dataclass(frozen=True)
class _Key:
    series: int | None
    echo: EchoKey
    component: str
    geometry: Geometry
    multiframe: bool


def plan_volumes(images: Sequence[Instance]) -> list[Volume]:
    """The volumes `images` (sorted, of one series) make, in a deterministic order."""
    orientations: list[tuple[float, ...]] = []
    members: dict[_Key, list[Instance]] = {}
    for image in images:
        key = _key(image, orientations)
        members.setdefault(key, []).append(image)

    keys = sorted(members, key=lambda k: _order(k, members[k]))
    series_numbers = {k.series for k in keys}
    echoes = sorted({k.echo for k in keys if not k.multiframe}, key=_echo_order)
    geometries: dict[tuple[int | None, EchoKey, str], set[Geometry]] = {}
    for k in keys:
        geometries.setdefault((k.series, k.echo, k.component), set()).add(k.geometry)

    volumes: list[Volume] = []
    used: set[str] = set()
    for k in keys:
        group = members[k]
        suffix = ""
        if len(series_numbers) > 1:
            suffix += f"_{k.series if k.series is not None else 'x'}"
        if not k.multiframe:
            number = _echo_number(k.echo, echoes)
            if len(echoes) > 1 or number > 1:
                suffix += f"_e{number}"
            suffix += _COMPONENT_SUFFIX[k.component]
            if len(geometries[(k.series, k.echo, k.component)]) > 1:
                first = group[0].instance_number
                suffix += f"_i{first if first is not None else 0:05d}"
        unique = suffix
        counter = 2
        while unique in used:
            unique = f"{suffix}_{counter}"
            counter += 1
        used.add(unique)
        volumes.append(Volume(tuple(group), unique, k.multiframe))
    return volumes


def component(image: Instance) -> str:
    """Magnitude, phase, real or imaginary; magnitude where no attribute says."""
    return stated_component(image) or MAGNITUDE


def stated_component(image: Instance) -> str | None:
    """Magnitude, phase, real or imaginary, from the attributes vendors use for it; None
    when none says."""
    ds = image.ds
    explicit = as_text(ds.get("ComplexImageComponent")).upper()
    if explicit in (PHASE.upper(), REAL.upper(), IMAGINARY.upper(), MAGNITUDE.upper()):
        return explicit.lower()
    ge = as_int(private_value(ds, 0x0043, "GEMS_PARM_01", 0x2F))
    if ge in _GE_COMPONENTS:
        return _GE_COMPONENTS[ge]
    tokens = set(image.image_type[2:])
    if tokens & {"P", "PHASE", "PHASE MAP"}:
        return PHASE
    if tokens & {"R", "REAL"}:
        return REAL
    if tokens & {"I", "IMAGINARY"}:
        return IMAGINARY
    if tokens & {"M", "MAGNITUDE"}:
        return MAGNITUDE
    return None


def _key(image: Instance, orientations: list[tuple[float, ...]]) -> _Key:
    ds = image.ds
    if image.frames > 1 and not image.is_mosaic:
        # Enhanced and other multi-frame objects: one run per series number; the frames'
        # own functional groups say what they are, and dcm2niix reads them.
        return _Key(image.series_number, (None, None), MAGNITUDE, (None, None, (), 0), True)
    echo_number = as_int(ds.get("EchoNumbers"))
    echo_time = as_float(ds.get("EchoTime"))
    echo = (echo_number, round(echo_time, 3) if echo_time is not None else None)
    spacing = tuple(round(as_float(v) or 0.0, 4) for v in as_list(ds.get("PixelSpacing")))
    geometry = (
        as_int(ds.get("Rows")),
        as_int(ds.get("Columns")),
        spacing,
        _orientation_index(image, orientations),
    )
    return _Key(image.series_number, echo, component(image), geometry, False)


def _orientation_index(image: Instance, orientations: list[tuple[float, ...]]) -> int:
    values = as_list(image.ds.get("ImageOrientationPatient"))
    orientation = tuple(as_float(v) or 0.0 for v in values)
    for index, known in enumerate(orientations):
        if len(known) == len(orientation) and all(
            abs(a - b) <= _ORIENTATION_TOLERANCE for a, b in zip(known, orientation, strict=True)
        ):
            return index
    orientations.append(orientation)
    return len(orientations) - 1


def _order(key: _Key, group: list[Instance]) -> tuple[object, ...]:
    return (
        key.multiframe,
        key.series if key.series is not None else -1,
        _echo_order(key.echo),
        _COMPONENT_ORDER[key.component],
        group[0].sort_key,
    )


def _echo_order(echo: EchoKey) -> tuple[int, float]:
    number, time = echo
    return (number if number is not None else 0, time if time is not None else 0.0)


def _echo_number(echo: EchoKey, echoes: list[EchoKey]) -> int:
    number = echo[0]
    if number is not None and number > 0:
        return number
    return echoes.index(echo) + 1 if echo in echoes else 1

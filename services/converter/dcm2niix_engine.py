"""dcm2niix (the PyPI package's binary) as an engine: `dcm2niix -i y -b y` on staged copies.

A `Dcm2niixRun` starts dcm2niix as a process of its own and collects what it wrote when
asked: the converter can start it on a whole series before it has read the headers itself
(`conversion`), so that on two cores the two overlap.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import re
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import dcm2niix
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from shared.durable import write_synced

from .engines import EngineError, EngineOutput, IgnoredByDcm2niix, is_out_of_space
from .instances import Instance

DCM2NIIX_TIMEOUT = 1800  # seconds; the caller's pool has its own, usually shorter, limit
_PROBE_BYTES = 1 << 20  # written to tell a full disk from images dcm2niix skips
# Transfer syntaxes dcm2niix decodes itself; others are decoded by pydicom for it.
DCM2NIIX_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    }
)
_DCM2NIIX_SKIPPED = frozenset({0, 2})  # its exit codes: done; found no images it converts
_CORRECTED_COPY = re.compile(r"^(?P<base>.*?)(?P<kind>_Tilt_Eq|_Tilt|_Eq)_\d+$")
_CORRECTION_NOTES = {
    "_Tilt": "gantry tilt corrected by dcm2niix (resampled)",
    "_Eq": "unequal slice spacing equalised by dcm2niix (resampled)",
    "_Tilt_Eq": "gantry tilt corrected and unequal slice spacing equalised by dcm2niix (resampled)",
}


@lru_cache(maxsize=1)
def dcm2niix_version() -> str:
    result = subprocess.run(
        [dcm2niix.bin, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.search(r"version (v\S+)", result.stdout + result.stderr)
    return match.group(1) if match else f"v{importlib.metadata.version('dcm2niix')}"


class Dcm2niixRun:
    """dcm2niix started on `sources` (staged under scratch/dicom); `outputs` waits for it."""

    def __init__(self, sources: Sequence[Path | Instance], scratch: Path) -> None:
        self._source = scratch / "dicom"
        self._target = scratch / "nifti"
        self._scratch = scratch
        self._source.mkdir(parents=True, exist_ok=True)
        self._target.mkdir(parents=True, exist_ok=True)
        for index, item in enumerate(sources):
            staged = self._source / f"{index:06d}.dcm"
            if isinstance(item, Path):
                staged.symlink_to(item.resolve())  # read as it is: the caller checks the syntax
                continue
            try:
                _stage_for_dcm2niix(item, staged)
            except Exception as exc:  # noqa: BLE001 - pydicom failing to decode or write it
                raise EngineError(
                    f"{item.path.name} could not be decoded for dcm2niix: "
                    f"{type(exc).__name__}: {exc}",
                    out_of_space=is_out_of_space(exc),
                ) from exc
        command = [
            dcm2niix.bin,
            "-i", "y",  # ignore derived, localizer and 2D images
            "-b", "y",
            "-ba", "y",  # no patient details in its sidecar
            "-z", "n",  # we compress, reproducibly
            "-d", "0",
            "-f", "vol",
            "-o", str(self._target),
            str(self._source),
        ]  # fmt: skip
        # HOME points at scratch: no user's ~/.dcm2nii.ini changes the result.
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, "HOME": str(scratch)},
        )

    def outputs(self) -> list[EngineOutput]:
        """What dcm2niix wrote; IgnoredByDcm2niix when it skipped the images, EngineError
        when it failed."""
        try:
            log, _ = self._process.communicate(timeout=DCM2NIIX_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            self.cancel()
            raise EngineError(f"dcm2niix: no result within {DCM2NIIX_TIMEOUT} s") from exc
        outputs = _collect_dcm2niix(self._target)
        if not outputs:
            # Nothing written, and success (0) or "no images it converts" (2): it skipped
            # them. Anything else (a damaged file, a crash) failed.
            log = log.replace(f"{self._source}{os.sep}", "").replace(str(self._scratch), "")
            ignored = [
                line for line in log.splitlines() if re.match(r"\s*(Ignoring|Skipping)", line)
            ]
            code = self._process.returncode
            if code in _DCM2NIIX_SKIPPED:
                raise IgnoredByDcm2niix(ignored[0].strip() if ignored else _tail(log))
            full = _out_of_room(self._target)
            if full is not None:  # the disk's fault, not the series': converted once there is room
                raise EngineError(
                    f"dcm2niix could not write: {full} ({_tail(log)})", out_of_space=True
                )
            raise EngineError(f"dcm2niix wrote nothing (exit {code}): {_tail(log)}")
        return outputs

    def cancel(self) -> None:
        """Stop it, if it still runs (its outputs are not wanted)."""
        if self._process.returncode is None:
            self._process.kill()
            self._process.communicate()


def _out_of_room(folder: Path) -> str | None:
    """The system's words for a full disk or quota where `folder` is, or None: dcm2niix only
    says "disk full?"."""
    probe = folder / ".room"
    try:
        write_synced(probe, bytes(_PROBE_BYTES))  # synced: a full disk may show only then
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(exc.errno)
    finally:
        probe.unlink(missing_ok=True)
    return None


def run_dcm2niix(images: Sequence[Instance], scratch: Path) -> list[EngineOutput]:
    """Convert `images` with `dcm2niix -i y`."""
    return Dcm2niixRun(images, scratch).outputs()


def _stage_for_dcm2niix(image: Instance, target: Path) -> None:
    if image.transfer_syntax in DCM2NIIX_SYNTAXES:
        target.symlink_to(image.path.resolve())
        return
    # Deflated, JPEG baseline/extended, HTJ2K, ...: decode with pydicom's plugins first.
    ds = pydicom.dcmread(image.path, force=True)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        ds.decompress()
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(target, enforce_file_format=True)


def _collect_dcm2niix(target: Path) -> list[EngineOutput]:
    stems = sorted(p.name[: -len(".nii")] for p in target.glob("vol*.nii"))
    corrected: dict[str, tuple[str, str]] = {}
    for stem in stems:
        match = _CORRECTED_COPY.match(stem)
        if match and match.group("base") in stems:
            corrected[match.group("base")] = (stem, match.group("kind"))
    outputs = []
    for stem in stems:
        match = _CORRECTED_COPY.match(stem)
        if match and match.group("base") in corrected:
            continue  # the corrected copy, taken with its plain sibling below
        metadata = _read_json(target / f"{stem}.json")
        chosen = stem
        notes: tuple[str, ...] = ()
        if stem in corrected:
            chosen, kind = corrected[stem]
            notes = (_CORRECTION_NOTES[kind],)
        suffix = stem[len("vol") :]
        if suffix and not suffix.startswith("_"):
            suffix = f"_{suffix}"
        bval, bvec = target / f"{chosen}.bval", target / f"{chosen}.bvec"
        gradients = (bval, bvec) if bval.is_file() and bvec.is_file() else (None, None)
        outputs.append(
            EngineOutput(
                suffix, target / f"{chosen}.nii", metadata, notes, chosen != stem, *gradients
            )
        )
    return outputs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _tail(log: str, lines: int = 3) -> str:
    kept = [line.strip() for line in log.splitlines() if line.strip()]
    kept = [line for line in kept if not line.startswith("Chris Rorden")]
    return " | ".join(kept[-lines:]) or "no message"

"""Converting one DICOM series to gzipped NIfTI files with JSON sidecars.

`convert_series` is a plain function for a worker process: it reads only the files it is
given, writes only under `out_dir` (and `work_dir`), and re-running it on the same files
writes the same bytes. Each output replaces its old version atomically (temporary name in
the same folder, then `os.replace`).

How a series is handled:

- objects without pixel data and secondary captures are skipped, as are derived images,
  localizers and single 2D images (the rules of `dcm2niix -i y`, see `rules`);
- the remaining images are split into volumes (series number, echo, magnitude/phase,
  orientation; see `grouping`);
- each stack of single-frame images is converted by dicom2nifti, keeping the stored
  integer type; where dicom2nifti fails (gantry tilt, missing slices, ...) or merges or
  drops images, and for multi-frame objects (enhanced MR/CT, RT dose), dcm2niix converts;
- every output gets a sidecar naming the engine that made it.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import engines, rules
from .engines import EngineError, EngineOutput, IgnoredByDcm2niix
from .grouping import Volume, plan_volumes
from .instances import Instance, read_instances
from .sidecar import ACQUISITION_KEYS, build_sidecar, dumps

Status = Literal["converted", "skipped", "failed"]
# zlib level 3: a third of level 6's time; on the test data at most 1.06 x the size of
# dcm2niix's level-6 output (level 1: up to 1.13 x, over the 1.1 x budget).
GZIP_LEVEL = 3
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Output:
    nifti: Path  # <out_dir>/<base_name>[_suffix].nii.gz
    sidecar: Path  # same name, .json
    engine: str  # "dicom2nifti 2.6.2" or "dcm2niix v1.0.20260724"


@dataclass(frozen=True)
class Conversion:
    status: Status
    outputs: tuple[Output, ...] = ()
    reason: str = ""  # why skipped or failed; "" when converted

    def out_of_space(self) -> bool:
        """Failed for want of disk space: the disk's fault, not the series'; it can be
        converted once there is room again."""
        return self.status == "failed" and any(
            os.strerror(code) in self.reason for code in (errno.ENOSPC, errno.EDQUOT)
        )


@dataclass(frozen=True)
class _Staged:
    """An output converted into the scratch folder, waiting to be filed."""

    name: str
    nifti: Path  # uncompressed NIfTI in work_dir
    sidecar: bytes
    engine: str


def convert_series(
    files: Sequence[Path],
    out_dir: Path,
    base_name: str,
    *,
    study_instance_uid: str,
    series_instance_uid: str,
    work_dir: Path,
) -> Conversion:
    """Convert the instance files of one series into `out_dir`/`base_name`*.nii.gz + .json."""
    if not base_name or "/" in base_name or base_name in (".", ".."):
        raise ValueError(f"not a file name: {base_name!r}")
    out_dir = Path(out_dir)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="convert-", dir=work_dir))
    try:
        return _convert(files, out_dir, base_name, study_instance_uid, series_instance_uid, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _convert(
    files: Sequence[Path],
    out_dir: Path,
    base_name: str,
    study_uid: str,
    series_uid: str,
    scratch: Path,
) -> Conversion:
    instances, problems = read_instances(files)
    if not instances:
        detail = "; ".join(problems[:3]) if problems else "no files"
        return Conversion("failed", reason=f"no readable DICOM instance ({detail})")

    images = [i for i in instances if i.has_pixels]
    if not images:
        return Conversion("skipped", reason=rules.non_image_reason(instances))

    skip_reasons: list[str] = []
    convertible: list[Instance] = []
    for image in images:
        reason = rules.instance_skip_reason(image)
        if reason is None:
            convertible.append(image)
        else:
            skip_reasons.append(reason)

    staged: list[_Staged] = []
    failures: list[str] = []
    for index, volume in enumerate(plan_volumes(convertible)):
        reason = rules.single_slice_reason(volume.instances)
        if reason is not None:
            skip_reasons.append(reason)
            continue
        try:
            staged.extend(
                _convert_volume(
                    volume, base_name, study_uid, series_uid, scratch / f"volume{index:04d}"
                )
            )
        except IgnoredByDcm2niix as exc:
            skip_reasons.append(f"ignored by dcm2niix -i y: {exc}")
        except EngineError as exc:
            failures.append(f"{base_name}{volume.suffix}: {exc}")

    outputs = _file_outputs(staged, out_dir)
    if failures:
        return Conversion("failed", outputs, "; ".join(failures))
    if outputs:
        return Conversion("converted", outputs)
    return Conversion("skipped", reason="; ".join(dict.fromkeys(skip_reasons)) or "no images")


def _convert_volume(
    volume: Volume, base_name: str, study_uid: str, series_uid: str, scratch: Path
) -> list[_Staged]:
    notes: list[str] = []
    results: list[EngineOutput]
    if volume.multiframe:
        software, version = "dcm2niix", engines.dcm2niix_version()
        notes.append(
            "multi-frame object: converted by dcm2niix (dicom2nifti converts only the first "
            "file of a multi-frame series and does not separate frame types)"
        )
        results = engines.run_dcm2niix(volume.instances, scratch / "dcm2niix")
    else:
        try:
            results = [engines.run_dicom2nifti(volume.instances, scratch / "dicom2nifti")]
            software, version = "dicom2nifti", engines.dicom2nifti_version()
        except EngineError as first:
            notes.append(f"converted by dcm2niix: {first}")
            software, version = "dcm2niix", engines.dcm2niix_version()
            try:
                results = engines.run_dcm2niix(volume.instances, scratch / "dcm2niix")
            except IgnoredByDcm2niix:
                raise
            except EngineError as second:
                raise EngineError(f"{first}; then {second}") from second
    staged = []
    for result in results:
        overrides = ACQUISITION_KEYS if volume.multiframe else ACQUISITION_KEYS - {"ImageType"}
        sidecar = build_sidecar(
            volume.instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            software=software,
            software_version=version,
            notes=[*notes, *result.notes],
            engine_metadata=result.metadata,
            engine_overrides=overrides if software == "dcm2niix" else (),
        )
        name = f"{base_name}{volume.suffix}{result.suffix}"
        staged.append(_Staged(name, result.nifti, dumps(sidecar), f"{software} {version}"))
    return staged


def _file_outputs(staged: Sequence[_Staged], out_dir: Path) -> tuple[Output, ...]:
    """Compress and move the staged outputs into `out_dir`, each replacing its old version."""
    if not staged:
        return ()
    out_dir.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    outputs = []
    for item in staged:
        name = item.name
        counter = 2
        while name in names:
            name = f"{item.name}_{counter}"
            counter += 1
        names.add(name)
        nifti = out_dir / f"{name}.nii.gz"
        sidecar = out_dir / f"{name}.json"
        _replace_with_gzip(nifti, item.nifti)
        _replace_with_bytes(sidecar, item.sidecar)
        outputs.append(Output(nifti, sidecar, item.engine))
    _fsync_directory(out_dir)
    return tuple(outputs)


def _temporary(path: Path) -> Path:
    return path.with_name(
        f".{path.name}.{temporary_owner(os.getpid())}.{uuid.uuid4().hex[:12]}.tmp"
    )


def temporary_owner(pid: int) -> str:
    """The part of a temporary output's name that says which process writes it: the host too,
    as converters on several hosts (or in containers, where process ids repeat) may write
    into one study folder, and each removes what its own killed conversions left."""
    return f"{socket.gethostname()}-{pid}"


def _replace_with_gzip(path: Path, source: Path) -> None:
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as raw:
            # mtime=0 and no file name in the gzip header: the same input, the same bytes.
            with (
                gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
                ) as compressed,
                open(source, "rb") as data,
            ):
                shutil.copyfileobj(data, compressed, _COPY_CHUNK)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _replace_with_bytes(path: Path, data: bytes) -> None:
    temporary = _temporary(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

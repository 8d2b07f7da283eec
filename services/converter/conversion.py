"""Converting one DICOM series to gzipped NIfTI files with JSON sidecars.

`convert_series` is a plain function for a worker process: it reads only the files it is
given, writes only under `out_dir` (and `work_dir`), and re-running it on the same files
writes the same bytes. Each output replaces its old version atomically (temporary name in
the same folder, then `os.replace`), mode 0640 in `out_dir`'s group (`shared.share`).

How a series is handled:

- objects without pixel data and secondary captures are skipped, as are derived images,
  localizers and single 2D images (the rules of `dcm2niix -i y`, see `rules`);
- the remaining images are split into volumes (series number, echo, magnitude/phase,
  orientation; see `grouping`);
- each volume is converted by the engines of `engine_order` in turn: MR by dcm2niix (with
  its sidecar keys and any diffusion gradient table), then dicom2nifti; other modalities by
  dicom2nifti (keeping the stored integer type), then dcm2niix; multi-frame objects by
  dcm2niix alone. The first engine whose outputs pass the geometry guard (`guard`) makes
  the volume; where none does, the series fails with each engine's reason;
- what dcm2niix -i y writes nothing for is skipped, whatever dicom2nifti made of it;
- every output gets a sidecar naming the engine that made it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nibabel as nib

from shared.catalog.states import ConversionState
from shared.durable import fsync_directory, replace_durably
from shared.share import make_folder

from . import engines, rules
from .dcm2niix_engine import DCM2NIIX_SYNTAXES, Dcm2niixRun, dcm2niix_version, run_dcm2niix
from .engines import EngineError, EngineOutput, IgnoredByDcm2niix
from .grouping import Volume, plan_volumes
from .guard import GeometryMismatch, check_volume
from .instances import Instance, as_text, read_instances
from .planes import Plane, UnknownGeometry, frames_left_out, source_planes
from .reading import read_file
from .sidecar import DCM2NIIX_KEYS, build_sidecar, dumps

# zlib level 3: a third of level 6's time; on the test data at most 1.06 x the size of
# dcm2niix's level-6 output (level 1: up to 1.13 x, over the 1.1 x budget).
GZIP_LEVEL = 3
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Output:
    nifti: Path  # <out_dir>/<base_name>[_suffix].nii.gz
    sidecar: Path  # same name, .json
    engine: str  # "dicom2nifti 2.6.2" or "dcm2niix v1.0.20260724"
    bval: Path | None = None  # diffusion: same name, .bval and .bvec
    bvec: Path | None = None


@dataclass(frozen=True)
class Conversion:
    status: ConversionState  # never PENDING
    outputs: tuple[Output, ...] = ()
    reason: str = ""  # why skipped or failed; "" when converted
    # Failed for want of disk space or quota: the disk's fault, not the series'; it can be
    # converted once there is room again.
    out_of_space: bool = False


@dataclass(frozen=True)
class _Staged:
    """An output converted into the scratch folder, waiting to be filed."""

    name: str
    nifti: Path  # uncompressed NIfTI in work_dir
    sidecar: bytes
    engine: str
    gradients: tuple[Path, Path] | None  # .bval, .bvec in work_dir


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
    early = _start_early(files, scratch / "early")
    try:
        return _convert(
            files, out_dir, base_name, study_instance_uid, series_instance_uid, scratch, early
        )
    finally:
        if early is not None:
            early.cancel()
        shutil.rmtree(scratch, ignore_errors=True)


def _start_early(files: Sequence[Path], scratch: Path) -> Dcm2niixRun | None:
    """dcm2niix started on the whole series, if it looks like an MR series, while this
    process reads the headers: on two cores the two overlap. Used where the series turns
    out to be one volume of every file, which dcm2niix reads itself; else stopped."""
    paths = sorted({Path(f) for f in files}, key=str)
    if not paths:
        return None
    try:
        modality = as_text(read_file(paths[0]).get("Modality")).upper()
        return Dcm2niixRun(paths, scratch) if modality == "MR" else None
    except Exception:  # noqa: BLE001 - the headers are read again, and problems reported, below
        return None


def _convert(
    files: Sequence[Path],
    out_dir: Path,
    base_name: str,
    study_uid: str,
    series_uid: str,
    scratch: Path,
    early: Dcm2niixRun | None,
) -> Conversion:
    instances, problems = read_instances(files)
    if not instances:
        detail = "; ".join(problems[:3]) if problems else "no files"
        return Conversion(ConversionState.FAILED, reason=f"no readable DICOM instance ({detail})")

    images = [i for i in instances if i.has_pixels]
    if not images:
        return Conversion(ConversionState.SKIPPED, reason=rules.non_image_reason(instances))

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
    out_of_space = False
    volumes = plan_volumes(convertible)
    if early is not None and not _is_whole_series(volumes, files):
        early.cancel()  # its result is not this series' volumes: stop it taking a core
        early = None
    for index, volume in enumerate(volumes):
        reason = rules.single_slice_reason(volume.instances)
        if reason is not None:
            skip_reasons.append(reason)
            continue
        try:
            staged.extend(
                _convert_volume(
                    volume, base_name, study_uid, series_uid, scratch / f"volume{index:04d}", early
                )
            )
        except IgnoredByDcm2niix as exc:
            skip_reasons.append(f"ignored by dcm2niix -i y: {exc}")
        except EngineError as exc:
            failures.append(f"{base_name}{volume.suffix}: {exc}")
            out_of_space = out_of_space or exc.out_of_space

    outputs = _file_outputs(staged, out_dir)
    if failures:
        return Conversion(ConversionState.FAILED, outputs, "; ".join(failures), out_of_space)
    if outputs:
        return Conversion(ConversionState.CONVERTED, outputs)
    return Conversion(
        ConversionState.SKIPPED, reason="; ".join(dict.fromkeys(skip_reasons)) or "no images"
    )


# dcm2niix reads the vendors' private headers that MR analysis needs (slice timing, phase
# encoding, echo spacing, diffusion gradients) and says in its sidecar which voxel axis they
# refer to: an MR volume is dcm2niix's, with dicom2nifti as the alternative. dicom2nifti
# converts the other modalities' stacks, with dcm2niix as the alternative.
_MR_ORDER = ("dcm2niix", "dicom2nifti")
_OTHER_ORDER = ("dicom2nifti", "dcm2niix")
_MULTIFRAME_NOTE = (
    "multi-frame object: converted by dcm2niix (dicom2nifti converts only the first file of "
    "a multi-frame series and does not separate frame types)"
)


def engine_order(volume: Volume) -> tuple[str, ...]:
    """The engines to try on `volume`, best first."""
    if volume.multiframe:
        return ("dcm2niix",)
    if as_text(volume.first.ds.get("Modality")).upper() == "MR":
        return _MR_ORDER
    return _OTHER_ORDER


def _is_whole_series(volumes: Sequence[Volume], files: Sequence[Path]) -> bool:
    """One volume of every file (none unreadable, repeated or skipped), each in an encoding
    dcm2niix reads itself: what dcm2niix, started on the files, converts."""
    if len(volumes) != 1 or len(volumes[0].instances) != len({Path(f) for f in files}):
        return False
    return all(i.transfer_syntax in DCM2NIIX_SYNTAXES for i in volumes[0].instances)


def _run(
    engine: str, volume: Volume, scratch: Path, early: Dcm2niixRun | None
) -> list[EngineOutput]:
    if engine == "dcm2niix":
        if early is not None:
            return early.outputs()
        return run_dcm2niix(volume.instances, scratch / "dcm2niix")
    return [engines.run_dicom2nifti(volume.instances, scratch / "dicom2nifti")]


def _version(engine: str) -> str:
    return dcm2niix_version() if engine == "dcm2niix" else engines.dicom2nifti_version()


def _convert_volume(
    volume: Volume,
    base_name: str,
    study_uid: str,
    series_uid: str,
    scratch: Path,
    early: Dcm2niixRun | None,
) -> list[_Staged]:
    """The volume by the first engine whose outputs pass the geometry guard."""
    rejected: list[str] = []
    out_of_space = False
    planes = _planes(volume.instances)
    for engine in engine_order(volume):
        try:
            results = _run(engine, volume, scratch, early)
        except IgnoredByDcm2niix:
            raise  # dcm2niix -i y skips it: skipped, whatever dicom2nifti made of it
        except EngineError as exc:
            rejected.append(str(exc))
            out_of_space = out_of_space or exc.out_of_space
            continue
        problem = _geometry_problem(planes, results)
        if problem is not None and frames_left_out(volume.instances):
            # Objects not read may hold what the volume shows (another echo): read them all.
            problem = _geometry_problem(_planes(volume.instances, every_frame=True), results)
        if problem is None:
            notes = [*(f"not converted by the first engine: {r}" for r in rejected)]
            if volume.multiframe:
                notes.insert(0, _MULTIFRAME_NOTE)
            return _stage(volume, results, engine, notes, base_name, study_uid, series_uid)
        rejected.append(f"{engine}: {problem}")
        if any(result.diffusion for result in results):
            # dicom2nifti writes no gradient table in dcm2niix's convention: a diffusion
            # volume without one is worse than none.
            rejected.append("no other engine writes this diffusion series' gradient table")
            break
    raise EngineError("; ".join(rejected), out_of_space=out_of_space)


def _planes(images: Sequence[Instance], *, every_frame: bool = False) -> list[Plane] | str:
    """The source images' planes, or why their geometry is unknown."""
    try:
        return source_planes(images, every_frame=every_frame)
    except UnknownGeometry as exc:
        return f"the geometry cannot be checked: {exc}"


def _geometry_problem(planes: list[Plane] | str, results: Sequence[EngineOutput]) -> str | None:
    """Why the outputs disagree with the source images (see `guard`; a text: why their
    geometry is unknown), or None."""
    if isinstance(planes, str):
        return planes
    for result in results:
        try:
            image = nib.load(result.nifti)
            if not isinstance(image, nib.Nifti1Image):
                return f"{result.nifti.name} is not a NIfTI-1 image"
            check_volume(image, planes, resampled=result.resampled)
        except GeometryMismatch as exc:
            return f"the volume disagrees with the DICOM headers: {exc}"
        except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
            return f"its volume does not read: {type(exc).__name__}: {exc}"
    return None


def _stage(
    volume: Volume,
    results: Sequence[EngineOutput],
    engine: str,
    notes: Sequence[str],
    base_name: str,
    study_uid: str,
    series_uid: str,
) -> list[_Staged]:
    version = _version(engine)
    staged = []
    for result in results:
        sidecar = build_sidecar(
            volume.instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            software=engine,
            software_version=version,
            notes=[*notes, *result.notes],
            engine_metadata=result.metadata,
            engine_overrides=DCM2NIIX_KEYS if engine == "dcm2niix" else (),
        )
        # dcm2niix names echoes and phase images itself; for one volume of ours (single-frame
        # images, grouped by echo and component already) the volume's suffix says it.
        suffix = result.suffix if volume.multiframe or len(results) > 1 else ""
        name = f"{base_name}{volume.suffix}{suffix}"
        gradients = (result.bval, result.bvec) if result.bval and result.bvec else None
        staged.append(_Staged(name, result.nifti, dumps(sidecar), f"{engine} {version}", gradients))
    return staged


def _file_outputs(staged: Sequence[_Staged], out_dir: Path) -> tuple[Output, ...]:
    """Compress and move the staged outputs into `out_dir`, each replacing its old version."""
    if not staged:
        return ()
    make_folder(out_dir)  # 2750 in the study folder's group, as the share wants
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
        bval = bvec = None
        if item.gradients is not None:
            bval, bvec = out_dir / f"{name}.bval", out_dir / f"{name}.bvec"
            _replace_with_bytes(bval, item.gradients[0].read_bytes())
            _replace_with_bytes(bvec, item.gradients[1].read_bytes())
        outputs.append(Output(nifti, sidecar, item.engine, bval, bvec))
    fsync_directory(out_dir)
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
    def compress(raw: BinaryIO) -> None:
        # mtime=0 and no file name in the gzip header: the same input, the same bytes.
        with (
            gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
            ) as compressed,
            open(source, "rb") as data,
        ):
            shutil.copyfileobj(data, compressed, _COPY_CHUNK)

    replace_durably(path, _temporary(path), compress)


def _replace_with_bytes(path: Path, data: bytes) -> None:
    replace_durably(path, _temporary(path), data)

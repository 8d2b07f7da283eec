"""Running one conversion in a process of its own, with a time limit.

Conversion is CPU-bound and runs third-party code on real-world data: a
segfault, a runaway memory use or an endless loop must fail that series, not
the service. Each conversion runs in a fresh process forked from a server
that has the conversion code imported already (cheap to start), and is killed
when it runs out of time.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from services.converter.conversion import Conversion, convert_series, temporary_owner
from services.converter.engines import is_out_of_space
from shared.catalog.states import ConversionState
from shared.logs import ChildLogging

_GC_THRESHOLD = 100_000  # allocations between collections of the youngest generation
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["services.converter.preload"])


@dataclass(frozen=True)
class Job:
    """One series to convert: everything ``convert_series`` needs."""

    files: tuple[Path, ...]
    out_dir: Path
    base_name: str
    study_instance_uid: str
    series_instance_uid: str

    def convert(self, work_dir: Path) -> Conversion:
        """The conversion, in this process (`run_isolated` runs it in one of its own)."""
        return convert_series(
            self.files,
            self.out_dir,
            self.base_name,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            work_dir=work_dir,
        )


def warm_up() -> None:
    """Start the fork server now, so that the first series does not wait for its imports."""
    multiprocessing.forkserver.ensure_running()


def run_isolated(job: Job, timeout: float, logs: ChildLogging | None = None) -> Conversion:
    """Convert in a child process; a crash or running out of time fails the series.

    ``logs``: how the child logs (the fork server configured nothing: without it, only
    warnings reach standard error, as plain text)."""
    receiving, sending = _CONTEXT.Pipe(duplex=False)
    work_dir = Path(tempfile.mkdtemp(prefix="dcmdb-convert-"))
    child = _CONTEXT.Process(target=_convert, args=(job, work_dir, sending, logs), daemon=True)
    try:
        child.start()
        sending.close()
        if not receiving.poll(timeout):
            return Conversion(
                status=ConversionState.FAILED, reason=f"conversion took over {timeout:.0f} s"
            )
        try:
            result: Conversion = receiving.recv()
        except EOFError:
            child.join(5)
            return Conversion(
                status=ConversionState.FAILED, reason=f"the converter crashed ({_how(child)})"
            )
        return result
    finally:
        if child.is_alive() and child.pid is not None:
            # The child leads a process group of its own: dcm2niix goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        child.join(5)
        receiving.close()
        shutil.rmtree(work_dir, ignore_errors=True)
        if child.pid is not None:
            _remove_partial_outputs(job.out_dir, child.pid)


def _how(child: multiprocessing.process.BaseProcess) -> str:
    code = child.exitcode
    return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _remove_partial_outputs(out_dir: Path, pid: int) -> None:
    """Temporary files a killed conversion left (named ``.<name>.<host>-<pid>.<hex>.tmp``)."""
    for partial in out_dir.glob(f".*.{temporary_owner(pid)}.*.tmp"):
        partial.unlink(missing_ok=True)


def _convert(job: Job, work_dir: Path, result: Connection, logs: ChildLogging | None) -> None:
    os.setpgrp()
    if logs is not None:
        logs.apply()
    # The headers of a series are tens of thousands of small objects that live until the
    # conversion ends; the default thresholds would scan them again and again for cycles.
    gc.set_threshold(_GC_THRESHOLD)
    try:
        conversion = job.convert(work_dir)
    except Exception as exc:  # a full disk, or a bug in the engines: fail the series, say which
        conversion = Conversion(
            status=ConversionState.FAILED,
            reason=f"{exc.__class__.__name__}: {exc}",
            out_of_space=is_out_of_space(exc),
        )
    result.send(conversion)
    result.close()
    # Skip the interpreter's teardown (tens of milliseconds of freeing modules a
    # process about to vanish does not need): the result is sent, files are synced.
    os._exit(0)

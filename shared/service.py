"""What every service does around its own work: settings, logging, the side port, stopping.

A service's ``main()`` is ``serve(name, SettingsClass, run)``: the settings are built once
(a bad one stops the service before anything starts), logging is configured, the side port
(`shared.monitoring.SidePort`) serves while ``run`` runs, and "<name> stopped" is logged
once ``run`` has stopped.

One stop idiom for every service: once ``run`` has said ``stop.running()``, the first
SIGTERM or SIGINT sets ``stop`` (a `Stop`, a threading.Event) and interrupts ``run`` where
it is: an asyncio ``run`` has its task cancelled, a blocking ``run`` gets `Stopped` raised
in the main thread. ``run`` stops gracefully in its ``finally`` blocks; threads it started
watch ``stop``. Later signals change nothing, so that they cannot cut a graceful stop short.
Before ``running()`` a signal has its default effect (SIGTERM ends the process at once):
a service starting may wait in a thread for the catalog, forever, which no cancellation
interrupts.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from shared.logs import configure_logging
from shared.monitoring import SidePort
from shared.settings import CommonSettings, load_settings

SettingsT = TypeVar("SettingsT", bound=CommonSettings)


class Stop(threading.Event):
    """Set by the first stop signal once the service said it is running."""

    def __init__(self) -> None:
        super().__init__()
        self.graceful = False

    def running(self) -> None:
        """Startup is over: from now on a stop signal stops the service gracefully."""
        self.graceful = True


AsyncRun = Callable[[SettingsT, SidePort, Stop], Coroutine[Any, Any, None]]
BlockingRun = Callable[[SettingsT, SidePort, Stop], None]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """Raised in a blocking service's main thread by the first stop signal.

    A BaseException, as KeyboardInterrupt is: the ``except Exception`` that lets a
    round of work retry after a failure must not swallow it.
    """


def configured(name: str, settings_class: type[SettingsT]) -> SettingsT:
    """The service's settings, with logging configured as they say."""
    settings = load_settings(settings_class)
    configure_logging(name, settings.log_level, settings.log_format)
    return settings


def serve(
    name: str,
    settings_class: type[SettingsT],
    run: AsyncRun[SettingsT] | BlockingRun[SettingsT],
) -> None:
    """Run a service until a stop signal, then log that it stopped."""
    settings = configured(name, settings_class)
    # Each service declares its own `metrics_port`: its default differs per service.
    side = SidePort(name, settings.metrics_host, getattr(settings, "metrics_port"))  # noqa: B009
    side.start()
    stop = Stop()
    try:
        if inspect.iscoroutinefunction(run):
            asyncio.run(_until_stopped(cast(AsyncRun[SettingsT], run)(settings, side, stop), stop))
        else:
            try:
                _on_stop_signal(stop, signal.signal, _raise_stopped)
                cast(BlockingRun[SettingsT], run)(settings, side, stop)
            except Stopped:
                pass
    finally:
        side.stop()  # ready and scraped until the work has stopped
    logging.getLogger(f"dcmdb.{name}").info("%s stopped", name)


async def _until_stopped(main: Coroutine[Any, Any, None], stop: Stop) -> None:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    _on_stop_signal(stop, loop.add_signal_handler, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        if not stop.is_set():
            raise  # cancelled by something else than a stop signal


def _on_stop_signal(
    stop: Stop,
    install: Callable[[int, Callable[..., None]], object],
    interrupt: Callable[[], object],
) -> None:
    defaults = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def stopping(signum: signal.Signals, *_: object) -> None:
        if not stop.graceful:  # starting: as if the service had installed no handler
            signal.signal(signum, defaults[signum])
            signal.raise_signal(signum)
            return
        if stop.is_set():
            return
        stop.set()
        interrupt()

    for signum in STOP_SIGNALS:
        install(signum, functools.partial(stopping, signum))


def _raise_stopped() -> None:
    raise Stopped

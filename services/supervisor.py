"""``dcmdb up``: every service on one host, each in its own process.

Output lines are prefixed with the service's name. A service that exits on
its own is restarted after a growing pause (a configuration error, exit code
2, stops everything instead: restarting cannot fix it). SIGTERM or Ctrl-C
stops every service with SIGTERM and waits for them to finish.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

CONFIGURATION_ERROR = 2
STOP_TIMEOUT = 30.0
_print_lock = threading.Lock()


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", self.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.started_at = time.monotonic()
        assert self.process.stdout is not None
        threading.Thread(target=_relay, args=(self.name, self.process.stdout), daemon=True).start()

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def restart_when_due(self) -> None:
        """Restart a service that exited, after a pause that grows while it keeps failing."""
        code = self.exited()
        if code is None:
            return
        now = time.monotonic()
        if self.restart_at is None:
            stable = now - self.started_at > 60
            self.restarts = 0 if stable else self.restarts + 1
            pause = min(2**self.restarts, 30)
            _say(f"{self.name} exited with code {code}; restarting in {pause} s")
            self.restart_at = now + pause
        elif now >= self.restart_at:
            self.restart_at = None
            self.start()


def _relay(name: str, stream: IO[bytes]) -> None:
    width = 9
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with _print_lock:
            print(f"{name:<{width}}| {line}", flush=True)


def run_all(names: list[str]) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    children = [Child(name) for name in names]
    for child in children:
        child.start()
    exit_code = 0
    while not stop.wait(0.2):
        for child in children:
            if child.exited() == CONFIGURATION_ERROR:
                _say(f"{child.name} cannot start (configuration error); stopping everything")
                stop.set()
                exit_code = CONFIGURATION_ERROR
                break
            child.restart_when_due()
    _stop_children(children)
    return exit_code


def _stop_children(children: list[Child]) -> None:
    running = [c for c in children if c.process and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _say(f"{child.name} did not stop in {STOP_TIMEOUT:.0f} s; killing it")
            child.process.kill()
            child.process.wait()
    _say("all services stopped")


def _say(message: str) -> None:
    with _print_lock:
        print(f"{'up':<9}| {message}", flush=True)

"""``dcmdb up``: every service on one host, each in its own process.

Output lines are prefixed with the service's name. With ``DCMDB_LOG_FORMAT=json``
every line is a JSON object instead: the services' lines pass as they are (they name
their service), and anything else a service prints (a crash's traceback) and the
supervisor's own lines are wrapped in one. A service that exits on
its own is restarted after a growing pause (a configuration error, exit code
2, stops everything instead: restarting cannot fix it). SIGTERM or Ctrl-C
stops every service with SIGTERM and waits for them to finish.

Each service with a side port (``shared.monitoring``) gets its own: its default
(``METRICS_PORTS``), or the one ``DCMDB_METRICS_PORTS`` names for it
(``receiver:19101,sorter:19102``); ``DCMDB_METRICS_PORT=0`` turns them all off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from shared.logs import json_entry
from shared.settings import ENV_PREFIX, METRICS_PORTS, CommonSettings, load_settings

CONFIGURATION_ERROR = 2
STOP_TIMEOUT = 30.0
SUPERVISOR = "up"  # the name the supervisor's own lines go by
_NAME_WIDTH = 9


class UpSettings(CommonSettings):
    """What ``dcmdb up`` itself reads: the side ports it hands its services."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # only 0 (none) counts here
    metrics_ports: Annotated[dict[str, int], NoDecode] = {}

    @field_validator("metrics_ports", mode="before")
    @classmethod
    def _service_ports(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        ports = {}
        for entry in (part.strip() for part in value.split(",")):
            if not entry:
                continue
            service, _, port = entry.partition(":")
            if service not in METRICS_PORTS or not port.isdigit() or int(port) > 65535:
                raise ValueError(
                    f"entry {entry!r} is not SERVICE:PORT with a service of "
                    f"{', '.join(METRICS_PORTS)}"
                )
            ports[service] = int(port)
        return ports

    def side_port(self, service: str) -> int | None:
        """The side port ``service`` gets; None for a service without one (the API)."""
        if service not in METRICS_PORTS:
            return None
        if self.metrics_port == 0:
            return 0
        return self.metrics_ports.get(service, METRICS_PORTS[service])


@dataclass
class Output:
    """The supervisor's standard output, shared by every child's relay thread."""

    fmt: Literal["text", "json"] = "text"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def relay(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.fmt == "text":
                self._print(f"{name:<{_NAME_WIDTH}}| {line}")
            elif _is_json_object(line):
                self._print(line)
            else:  # not through the service's logging: a traceback, a line before it started
                self._print(json.dumps(json_entry(name, line, "ERROR")))

    def say(self, message: str, level: str = "INFO") -> None:
        if self.fmt == "text":
            self._print(f"{SUPERVISOR:<{_NAME_WIDTH}}| {message}")
        else:
            self._print(json.dumps(json_entry(SUPERVISOR, message, level)))

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, flush=True)


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@dataclass
class Child:
    name: str
    output: Output
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.commands.cli", self.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.started_at = time.monotonic()
        assert self.process.stdout is not None
        relay = threading.Thread(
            target=self.output.relay, args=(self.name, self.process.stdout), daemon=True
        )
        relay.start()

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
            self.output.say(
                f"{self.name} exited with code {code}; restarting in {pause} s", "WARNING"
            )
            self.restart_at = now + pause
        elif now >= self.restart_at:
            self.restart_at = None
            self.start()


def child_environments(names: list[str], output: Output | None = None) -> dict[str, dict[str, str]]:
    """Each service's environment: this one, with the service's own side port."""
    output = output or Output()
    settings = load_settings(UpSettings)
    if settings.metrics_port:
        output.say(
            f"DCMDB_METRICS_PORT={settings.metrics_port} is ignored: each service has a side "
            "port of its own (set them with DCMDB_METRICS_PORTS; 0 turns them off)",
            "WARNING",
        )
    environments = {}
    for name in names:
        env = dict(os.environ)
        port = settings.side_port(name)
        if port is not None:
            env[f"{ENV_PREFIX}METRICS_PORT"] = str(port)
        environments[name] = env
    return environments


def run_all(names: list[str], log_format: Literal["text", "json"] = "text") -> int:
    output = Output(log_format)
    environments = child_environments(names, output)  # a bad setting stops here
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    children = [Child(name, output, environments[name]) for name in names]
    for child in children:
        child.start()
    exit_code = 0
    while not stop.wait(0.2):
        for child in children:
            if child.exited() == CONFIGURATION_ERROR:
                output.say(
                    f"{child.name} cannot start (configuration error); stopping everything",
                    "ERROR",
                )
                stop.set()
                exit_code = CONFIGURATION_ERROR
                break
            child.restart_when_due()
    _stop_children(children, output)
    return exit_code


def _stop_children(children: list[Child], output: Output) -> None:
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
            output.say(f"{child.name} did not stop in {STOP_TIMEOUT:.0f} s; killing it", "WARNING")
            child.process.kill()
            child.process.wait()
    output.say("all services stopped")

"""Log setup shared by every service: plain text or JSON lines, never identifiers.

Patient names, IDs and birth dates never go into log messages; pynetdicom,
which logs dataset identifiers by default, is told not to.

A line written while a service handles a message says which: the consumers wrap each
message in ``about(event)``, and every line logged inside (in that task, or in a thread
started from it with ``asyncio.to_thread``) carries the message id and the study UID.
JSON lines show them as ``message_id`` and ``study_uid``; ``extra=`` on a call overrides.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

CONTEXT_FIELDS = ("message_id", "study_uid")
# (field, value) pairs: an immutable default, shared by every context that set nothing.
_context: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("dcmdb_log_context", default=())


@contextmanager
def about(event: object) -> Iterator[None]:
    """Lines logged inside concern ``event`` (a message on the bus): its id and study."""
    fields = {
        "message_id": getattr(event, "message_id", None),
        "study_uid": getattr(event, "study_instance_uid", None),
    }
    with log_context(**{k: str(v) for k, v in fields.items() if v is not None}):
        yield


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Lines logged inside carry ``fields`` (of ``CONTEXT_FIELDS``)."""
    token = _context.set(tuple({**dict(_context.get()), **fields}.items()))
    try:
        yield
    finally:
        _context.reset(token)


@dataclass(frozen=True)
class ChildLogging:
    """How a process a service starts logs: as the service does, about what it handles now."""

    service: str
    level: str
    fmt: str
    context: tuple[tuple[str, str], ...]

    @classmethod
    def now(cls, service: str, level: str, fmt: str) -> ChildLogging:
        return cls(service, level, fmt, _context.get())

    def apply(self) -> None:
        """In the child: log as the service does, in the context it was handed."""
        _install(self.service, self.level, self.fmt)
        _context.set(self.context)


class _WithContext(logging.Filter):
    """Copies the message context onto each record (unless ``extra=`` set it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonLines(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = json_entry(self._service, record.getMessage(), record.levelname, record.created)
        entry["logger"] = record.name
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def json_entry(
    service: str, message: str, level: str = "INFO", created: float | None = None
) -> dict[str, str]:
    """The fields every JSON line has; also how ``dcmdb up`` wraps what is not JSON."""
    moment = datetime.fromtimestamp(created, UTC) if created is not None else datetime.now(UTC)
    return {"time": moment.isoformat(), "level": level, "service": service, "message": message}


def configure_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    _install(service, level, fmt)
    # pynetdicom logs dataset identifiers at DEBUG unless told not to. Imported here, not at
    # the top: a conversion process logs through this module and has no use for pynetdicom.
    from pynetdicom import _config as pynetdicom_config

    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"


def _install(service: str, level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_WithContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library warnings (pydicom's about odd data sets) go through the same format.
    logging.captureWarnings(True)
    # pynetdicom logs every association step at INFO; dcmdb says what matters itself.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    # Both report every failed connection attempt on their own; dcmdb says it once.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    # dicom2nifti names the files it writes at INFO: study folders carry patient IDs.
    logging.getLogger("dicom2nifti").setLevel(logging.WARNING)

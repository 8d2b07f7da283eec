"""The events services exchange over RabbitMQ, and where each one travels.

Payloads carry UIDs and paths, never pixel data and never patient identifiers.
Every event names its routing key; the queues that consume them are declared
next to the models so that one file answers "who listens to what".
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.catalog.states import EvictionReason

SCHEMA_VERSION = 1

EVENTS_EXCHANGE = "dcmdb.events"
DEAD_LETTER_EXCHANGE = "dcmdb.dead-letter"


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Common envelope: what every message on the bus carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    routing_key: ClassVar[str]

    schema_version: int = SCHEMA_VERSION
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=_now)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> Event:
        return cls.model_validate_json(body)


class InstanceReceived(Event):
    """An instance is safely on disk in ``incoming/``; the sorter takes it from there."""

    routing_key: ClassVar[str] = "instance.received"

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    incoming_path: str  # relative to the data directory
    size: int
    received_at: datetime
    calling_ae: str
    peer_host: str
    association_id: str


class AssociationClosed(Event):
    """A peer's association ended; what it carried."""

    routing_key: ClassVar[str] = "association.closed"

    association_id: str
    calling_ae: str
    peer_host: str
    started_at: datetime
    ended_at: datetime
    released: bool  # False when aborted
    instances_stored: int
    instances_failed: int
    bytes_stored: int
    study_instance_uids: tuple[str, ...]


class InstanceFiled(Event):
    """An instance is in the archive and the catalog."""

    routing_key: ClassVar[str] = "instance.filed"

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    archive_path: str  # relative to the archive root
    physician_folder: str
    replaced: bool  # an older copy of the same SOP Instance UID was overwritten


class SeriesEvent(Event):
    """What every event about one generation of a series carries."""

    study_instance_uid: str
    series_instance_uid: str
    generation: int  # grows each time a late instance reopens the series


class SeriesCompleted(SeriesEvent):
    """A series is taken to be whole: nothing arrived for the stable age, or all it should hold."""

    routing_key: ClassVar[str] = "series.completed"

    instances: int
    reason: Literal["stable", "expected count reached"]


class SeriesConverted(SeriesEvent):
    routing_key: ClassVar[str] = "series.converted"

    outcome: Literal["converted"] = "converted"
    outputs: tuple[str, ...]  # NIfTI paths relative to the archive root
    engines: tuple[str, ...]


class SeriesSkipped(SeriesEvent):
    routing_key: ClassVar[str] = "series.skipped"

    outcome: Literal["skipped"] = "skipped"
    reason: str


class SeriesFailed(SeriesEvent):
    routing_key: ClassVar[str] = "series.failed"

    outcome: Literal["failed"] = "failed"
    reason: str


class StudyEvicted(Event):
    """Retention removed a study: its files, NIfTI and catalog rows are gone."""

    routing_key: ClassVar[str] = "study.evicted"

    eviction_id: int  # its row in the catalog's audit table (``evictions``)
    study_instance_uid: str
    physician_folder: str
    folder: str  # the study folder it had, relative to the archive root
    reason: EvictionReason
    series: int
    instances: int
    size_bytes: int
    received_at: datetime
    evicted_at: datetime


class Queue(BaseModel):
    """A durable consumer queue bound to some routing keys."""

    model_config = ConfigDict(frozen=True)

    name: str
    routing_keys: tuple[str, ...]
    delivery_limit: int = 5

    @property
    def dead_letter_name(self) -> str:
        return f"{self.name}.dead"


SORTER_QUEUE = Queue(name="dcmdb.sorter", routing_keys=(InstanceReceived.routing_key,))
# A conversion that fails three times in a row is not worth a fourth.
CONVERTER_QUEUE = Queue(
    name="dcmdb.converter", routing_keys=(SeriesCompleted.routing_key,), delivery_limit=3
)

ALL_QUEUES: tuple[Queue, ...] = (SORTER_QUEUE, CONVERTER_QUEUE)

"""The events services exchange over RabbitMQ, and where each one travels.

Payloads carry UIDs and paths, never pixel data and never patient identifiers.
Every event names its routing key; the queues that consume them are declared
next to the models so that one file answers "who listens to what". The names of
exchanges and queues on the broker belong to one installation (``Topology``), so that
several dcmdb installations can share one RabbitMQ virtual host.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from shared.catalog.states import EvictionReason

SCHEMA_VERSION = 1


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
    # Written but not synced: an instance of a retrieval dcmdb asked for itself, made
    # durable by the retrieval job's sync at its end (`shared.unsynced`).
    deferred_sync: bool = False


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


# What became of a completed series, told apart by its ``outcome``: one queue takes all three.
SeriesOutcome = Annotated[
    SeriesConverted | SeriesSkipped | SeriesFailed, Field(discriminator="outcome")
]
SERIES_OUTCOMES: TypeAdapter[SeriesOutcome] = TypeAdapter(SeriesOutcome)


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


class BidsRulesChanged(Event):
    """A lab's BIDS rules file was replaced: its sessions are named again."""

    routing_key: ClassVar[str] = "bids.rules-changed"

    lab: str  # the physician folder


# What changes a lab's BIDS dataset (shared/bids): a series' outcome, an eviction, new rules.
BidsChange = SeriesConverted | SeriesSkipped | SeriesFailed | StudyEvicted | BidsRulesChanged
BIDS_CHANGES: TypeAdapter[BidsChange] = TypeAdapter(BidsChange)


class Queue(BaseModel):
    """A durable consumer queue bound to some routing keys; its name on the broker is the
    installation's (``Topology.queue_name``)."""

    model_config = ConfigDict(frozen=True)

    consumer: str
    routing_keys: tuple[str, ...]
    delivery_limit: int = 5


SORTER_QUEUE = Queue(consumer="sorter", routing_keys=(InstanceReceived.routing_key,))
# A conversion that fails three times in a row is not worth a fourth.
CONVERTER_QUEUE = Queue(
    consumer="converter", routing_keys=(SeriesCompleted.routing_key,), delivery_limit=3
)

# Lab webhooks: the notifier decides from each outcome whether a study is ready.
NOTIFIER_QUEUE = Queue(
    consumer="notifier",
    routing_keys=(
        SeriesConverted.routing_key,
        SeriesSkipped.routing_key,
        SeriesFailed.routing_key,
    ),
)

# Each lab's BIDS dataset follows its conversions, evictions and rules (the converter keeps it).
BIDS_QUEUE = Queue(
    consumer="bids",
    routing_keys=(
        SeriesConverted.routing_key,
        SeriesSkipped.routing_key,
        SeriesFailed.routing_key,
        StudyEvicted.routing_key,
        BidsRulesChanged.routing_key,
    ),
)

ALL_QUEUES: tuple[Queue, ...] = (SORTER_QUEUE, CONVERTER_QUEUE, NOTIFIER_QUEUE, BIDS_QUEUE)

# The installation of a deployment that never set one: its names are those dcmdb always had,
# so that its queues, and the messages waiting in them, stay where they are.
DEFAULT_INSTALLATION = "dcmdb"
# No '.': it separates the installation from the rest of a name, so two installations
# can never form the same name.
_INSTALLATION_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def installation_name(value: str) -> str:
    """``value`` if it may name an installation; a ValueError saying what may otherwise."""
    if not _INSTALLATION_NAME.fullmatch(value):
        raise ValueError(
            "must be 1 to 32 letters, digits, '-' or '_': it begins the name of each RabbitMQ"
            " exchange and queue of the installation"
        )
    return value


class Topology(BaseModel):
    """The exchanges and queues of one installation on the broker, all named
    ``<installation>.<what>``: another installation on the same virtual host shares none."""

    model_config = ConfigDict(frozen=True)

    installation: str = DEFAULT_INSTALLATION

    _valid_installation = field_validator("installation")(installation_name)

    @property
    def events_exchange(self) -> str:
        """The topic exchange every event is published to."""
        return f"{self.installation}.events"

    @property
    def dead_letter_exchange(self) -> str:
        """The direct exchange routing each dead letter to its queue's dead-letter queue."""
        return f"{self.installation}.dead-letter"

    def queue_name(self, queue: Queue) -> str:
        return f"{self.installation}.{queue.consumer}"

    def dead_letter_name(self, queue: Queue) -> str:
        return f"{self.queue_name(queue)}.dead"

    @property
    def dead_letter_names(self) -> tuple[str, ...]:
        return tuple(self.dead_letter_name(queue) for queue in ALL_QUEUES)

"""The receiver's DICOM event handlers and the status each outcome gets.

C-STORE statuses (PS3.4 B.2.3), decided here and nowhere else:

======  ==============================================================
0x0000  stored durably in incoming/ (then announced, asynchronously)
0xA700  out of resources: free space for incoming/ is below DCMDB_MIN_FREE,
        or the instance could not be written (disk full, I/O error); no
        partial file is left behind
0xC210  cannot understand: the data set does not parse; kept in quarantine/
0xC211  cannot understand: an identifying UID is missing or invalid;
        kept in quarantine/
======  ==============================================================

Associations from calling AE titles or hosts outside the allow-lists are
rejected (rejected-permanent, calling AE title not recognised).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE

from services.receiver import metrics
from services.receiver.announcer import Announcer
from services.receiver.settings import ReceiverSettings
from services.receiver.storage import FileMeta, IncomingStore, SpaceFloor
from shared.dimse_status import (
    CANNOT_UNDERSTAND,
    CANNOT_UNDERSTAND_OTHER,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from shared.errors import MissingIdentifier, StorageFailed, UnreadableObject
from shared.headers import read_identifiers
from shared.messages import AssociationClosed, InstanceReceived

log = logging.getLogger(__name__)

_REJECTED_PERMANENT = 0x01
_SERVICE_USER = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03


@dataclass
class AssociationRecord:
    """What one association carried, for its ``association.closed`` event."""

    calling_ae: str
    peer_host: str
    association_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    stored: int = 0
    failed: int = 0
    bytes_stored: int = 0
    released: bool = False
    studies: set[str] = field(default_factory=set)
    counters: metrics.PeerCounters = field(init=False)

    def __post_init__(self) -> None:
        self.counters = metrics.PeerCounters.of(self.calling_ae)


class Receiver:
    """Binds the store, the announcer and the settings into pynetdicom handlers."""

    def __init__(
        self, settings: ReceiverSettings, store: IncomingStore, announcer: Announcer
    ) -> None:
        self.settings = settings
        self.store = store
        self.announcer = announcer
        self.floor = SpaceFloor(settings.incoming_dir, settings.min_free)
        self._records: dict[int, AssociationRecord] = {}
        self._lock = threading.Lock()

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_CONN_CLOSE, self.on_connection_closed),
        ]

    def on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        # The requestor's details are filled in only after this event: read the request.
        request = cast(A_ASSOCIATE, assoc.requestor.primitive)
        calling_ae = str(request.calling_ae_title).strip()
        host = assoc.requestor.address
        allowed_aes = self.settings.allowed_calling_aes
        allowed_hosts = self.settings.allowed_hosts
        if (allowed_aes and calling_ae not in allowed_aes) or (
            allowed_hosts and host not in allowed_hosts
        ):
            log.warning("rejecting association from %s at %s: not allowed", calling_ae, host)
            metrics.ASSOCIATIONS.labels("rejected").inc()
            assoc.acse.send_reject(_REJECTED_PERMANENT, _SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)

    def on_accepted(self, event: evt.Event) -> None:
        record = AssociationRecord(_calling_ae(event.assoc), event.assoc.requestor.address)
        with self._lock:
            self._records[id(event.assoc)] = record
        metrics.ASSOCIATIONS_OPEN.inc()

    def on_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        # A request pynetdicom served after the connection closed has no record left:
        # its instance arrived whole, so it is kept all the same.
        record = self._records.get(id(event.assoc)) or AssociationRecord(
            _calling_ae(event.assoc), event.assoc.requestor.address
        )
        if self.floor.reached():  # refused before the disk is full, not when it is
            record.failed += 1
            metrics.REFUSED.labels(record.calling_ae, "out_of_resources").inc()
            return OUT_OF_RESOURCES
        status = self._store(record, event)
        metrics.STORE_SECONDS.observe(time.perf_counter() - started)
        return status

    def _store(self, record: AssociationRecord, event: evt.Event) -> int:
        request = cast(C_STORE, event.request)
        dataset = cast(BytesIO, request.DataSet).getvalue()
        transfer_syntax = str(event.context.transfer_syntax)
        try:
            uids = read_identifiers(dataset, transfer_syntax)
        except UnreadableObject as exc:
            record.failed += 1
            missing_uid = isinstance(exc, MissingIdentifier)
            status = CANNOT_UNDERSTAND_OTHER if missing_uid else CANNOT_UNDERSTAND
            meta = FileMeta(
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
                transfer_syntax,
                record.calling_ae,
            )
            kept = self.store.quarantine_object(meta, dataset, str(exc))
            log.warning(
                "unreadable object from %s quarantined as %s: %s",
                record.calling_ae,
                kept.name if kept else "(not kept)",
                exc,
            )
            reason = "missing_uid" if missing_uid else "cannot_parse"
            metrics.REFUSED.labels(record.calling_ae, reason).inc()
            return status
        meta = FileMeta(
            uids.sop_class_uid, uids.sop_instance_uid, transfer_syntax, record.calling_ae
        )
        try:
            stored = self.store.store(meta, dataset)
        except StorageFailed as exc:
            record.failed += 1
            log.error(
                "answering 0x%04X to %s: %s",
                OUT_OF_RESOURCES,
                record.calling_ae,
                exc,
                extra={"study_uid": uids.study_instance_uid},
            )
            metrics.REFUSED.labels(record.calling_ae, "out_of_resources").inc()
            return OUT_OF_RESOURCES
        record.stored += 1
        record.bytes_stored += stored.size
        record.counters.instances.inc()
        record.counters.bytes.inc(stored.size)
        record.studies.add(uids.study_instance_uid)
        self.announcer.announce(
            InstanceReceived,
            sop_instance_uid=uids.sop_instance_uid,
            sop_class_uid=uids.sop_class_uid,
            study_instance_uid=uids.study_instance_uid,
            series_instance_uid=uids.series_instance_uid,
            transfer_syntax_uid=transfer_syntax,
            incoming_path=f"{self.settings.incoming_folder}/{stored.name}",
            size=stored.size,
            received_at=stored.received_at,
            calling_ae=record.calling_ae,
            peer_host=record.peer_host,
            association_id=record.association_id,
        )
        return SUCCESS

    def on_released(self, event: evt.Event) -> None:
        record = self._records.get(id(event.assoc))
        if record:
            record.released = True

    def on_connection_closed(self, event: evt.Event) -> None:
        with self._lock:
            record = self._records.pop(id(event.assoc), None)
        if record is None:  # rejected or never established
            return
        metrics.ASSOCIATIONS_OPEN.dec()
        metrics.ASSOCIATIONS.labels("released" if record.released else "aborted").inc()
        log.info(
            "association from %s %s: %d stored, %d failed",
            record.calling_ae,
            "released" if record.released else "aborted",
            record.stored,
            record.failed,
        )
        self.announcer.announce(
            AssociationClosed,
            association_id=record.association_id,
            calling_ae=record.calling_ae,
            peer_host=record.peer_host,
            started_at=record.started_at,
            ended_at=datetime.now(UTC),
            released=record.released,
            instances_stored=record.stored,
            instances_failed=record.failed,
            bytes_stored=record.bytes_stored,
            study_instance_uids=tuple(sorted(record.studies)),
        )


def _calling_ae(assoc: Any) -> str:
    return str(assoc.requestor.ae_title).strip()

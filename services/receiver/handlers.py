"""The receiver's DICOM event handlers and the status each outcome gets.

C-STORE statuses (PS3.4 B.2.3), decided here and nowhere else:

======  ==============================================================
0x0000  stored durably in incoming/ (then announced, asynchronously); an instance
        of a retrieval dcmdb asked for itself (`own_retrieval`) once written,
        made durable by its job's sync at the end (`shared.unsynced`)
0xB006  warning, elements discarded: dcmdb has filed this SOP Instance UID already and
        this copy does not replace it (DCMDB_OVERWRITE; shared/overwrite.py): it is kept
        in quarantine/ with the reason, the filed copy stays. A warning, not a failure: the
        sender must not send it again, and a PACS counts it among a move's warnings
0xA700  out of resources: free space for incoming/ is below DCMDB_MIN_FREE,
        or the instance could not be written (disk full, I/O error); no
        partial file is left behind
0xC210  cannot understand: the data set does not parse; kept in quarantine/
0xC211  cannot understand: an identifying UID is missing or invalid;
        kept in quarantine/
======  ==============================================================

Every failure and warning carries an Error Comment (0000,0902) saying why.

Associations are rejected, permanently, by the service user (PS3.8 9.3.4), with the
reason a peer's operator can act on:

- from a host outside ``DCMDB_ALLOWED_HOSTS``: no reason given;
- from a calling AE title outside ``DCMDB_ALLOWED_CALLING_AES``: calling AE title not
  recognised;
- to a called AE title other than dcmdb's (``DCMDB_AE_TITLE``, ``DCMDB_AE_ALIASES``):
  called AE title not recognised.

A lab's desktop (``dcmdb desktops``) is let in by its AE title and host, whatever the
allow-lists say.
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

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu_primitives import A_ASSOCIATE

from services.receiver import metrics
from services.receiver.announcer import Announcer
from services.receiver.desktops import Desktops
from services.receiver.settings import ReceiverSettings
from shared.dimse_status import (
    CANNOT_UNDERSTAND,
    CANNOT_UNDERSTAND_OTHER,
    ELEMENTS_DISCARDED,
    OUT_OF_RESOURCES,
    SUCCESS,
    with_comment,
)
from shared.errors import MissingIdentifier, StorageFailed, UnreadableObject
from shared.filed_copies import FiledCopies
from shared.headers import read_identifiers
from shared.incoming import FileMeta, IncomingStore, SpaceFloor
from shared.messages import AssociationClosed, InstanceReceived

log = logging.getLogger(__name__)

_REJECTED_PERMANENT = 0x01
_SERVICE_USER = 0x01
_NO_REASON = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03
_CALLED_AE_NOT_RECOGNISED = 0x07


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
        self,
        settings: ReceiverSettings,
        store: IncomingStore,
        announcer: Announcer,
        desktops: Desktops,
    ) -> None:
        self.settings = settings
        self.desktops = desktops
        self.store = store
        self.announcer = announcer
        self.floor = SpaceFloor(settings.incoming_dir, settings.min_free)
        self.filed_copies = FiledCopies.of(settings)
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
        called_ae = str(request.called_ae_title).strip()
        host = assoc.requestor.address
        refusal = self._refusal(calling_ae, called_ae, host)
        if refusal is None:
            return
        reason, why = refusal
        log.warning(
            "rejecting association from %s at %s to %s: %s", calling_ae, host, called_ae, why
        )
        metrics.ASSOCIATIONS.labels("rejected").inc()
        assoc.acse.send_reject(_REJECTED_PERMANENT, _SERVICE_USER, reason)
        # As pynetdicom does when it rejects by itself: wait for the A-ASSOCIATE-RJ to go
        # out and the peer to close. Without it the connection is closed first, and the
        # peer sees an abort where it should read the reason.
        assoc.kill()

    def _refusal(self, calling_ae: str, called_ae: str, host: str) -> tuple[int, str] | None:
        """Why an association is rejected, and the A-ASSOCIATE-RJ reason; None: accepted."""
        if called_ae not in self.settings.own_ae_titles:
            return (
                _CALLED_AE_NOT_RECOGNISED,
                "not dcmdb's AE title (DCMDB_AE_TITLE, DCMDB_AE_ALIASES)",
            )
        if self.desktops.calling(calling_ae, host) is not None:
            return None
        if self.settings.allowed_hosts and host not in self.settings.allowed_hosts:
            return _NO_REASON, "host not in DCMDB_ALLOWED_HOSTS"
        allowed_aes = self.settings.allowed_calling_aes
        if allowed_aes and calling_ae not in allowed_aes:
            return _CALLING_AE_NOT_RECOGNISED, "calling AE title not in DCMDB_ALLOWED_CALLING_AES"
        return None

    def on_accepted(self, event: evt.Event) -> None:
        record = AssociationRecord(_calling_ae(event.assoc), event.assoc.requestor.address)
        with self._lock:
            self._records[id(event.assoc)] = record
        metrics.ASSOCIATIONS_OPEN.inc()

    def on_store(self, event: evt.Event) -> int | Dataset:
        started = time.perf_counter()
        # A request pynetdicom served after the connection closed has no record left:
        # its instance arrived whole, so it is kept all the same.
        record = self._records.get(id(event.assoc)) or AssociationRecord(
            _calling_ae(event.assoc), event.assoc.requestor.address
        )
        if self.floor.reached():  # refused before the disk is full, not when it is
            record.failed += 1
            metrics.REFUSED.labels(record.calling_ae, "out_of_resources").inc()
            return with_comment(
                OUT_OF_RESOURCES, "out of space: free space is below DCMDB_MIN_FREE"
            )
        status = self._store(record, event)
        metrics.STORE_SECONDS.observe(time.perf_counter() - started)
        return status

    def _store(self, record: AssociationRecord, event: evt.Event) -> int | Dataset:
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
                "unreadable object from %s at %s quarantined as %s: %s",
                record.calling_ae,
                record.peer_host,
                kept.name if kept else "(not kept)",
                exc,
            )
            reason = "missing_uid" if missing_uid else "cannot_parse"
            metrics.REFUSED.labels(record.calling_ae, reason).inc()
            return with_comment(status, str(exc))
        meta = FileMeta(
            uids.sop_class_uid, uids.sop_instance_uid, transfer_syntax, record.calling_ae
        )
        if (refusal := self.filed_copies.refuse_data_set(self.store, meta, dataset)) is not None:
            metrics.REFUSED.labels(record.calling_ae, "not_filed").inc()
            return with_comment(ELEMENTS_DISCARDED, f"not filed: {refusal}")
        deferred = own_retrieval(request, self.settings.own_ae_titles)
        try:
            stored = self.store.store(meta, dataset, deferred=deferred)
        except StorageFailed as exc:
            record.failed += 1
            log.error(
                "answering 0x%04X to %s at %s: %s",
                OUT_OF_RESOURCES,
                record.calling_ae,
                record.peer_host,
                exc,
                extra={"study_uid": uids.study_instance_uid},
            )
            metrics.REFUSED.labels(record.calling_ae, "out_of_resources").inc()
            return with_comment(OUT_OF_RESOURCES, f"not stored: {exc}")
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
            deferred_sync=deferred,
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
            "association from %s at %s %s: %d stored, %d failed",
            record.calling_ae,
            record.peer_host,
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


def own_retrieval(request: C_STORE, own_ae_titles: frozenset[str]) -> bool:
    """A sub-operation of a C-MOVE dcmdb sent (the PACS names dcmdb as the move originator,
    with the message ID of its request), or an instance dcmdb's retriever hands on from its
    own C-GET (`services.retriever.forwarding` names dcmdb the same way). The PACS keeps
    its copy: such an instance need not be on disk before it is answered."""
    return (
        request.MoveOriginatorMessageID is not None
        and request.MoveOriginatorApplicationEntityTitle in own_ae_titles
    )


def _calling_ae(assoc: Any) -> str:
    return str(assoc.requestor.ae_title).strip()

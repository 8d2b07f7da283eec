"""dcmdb's C-MOVE and C-GET SCP: the labs' desktops retrieve their studies (Study Root and
Patient Root Query/Retrieve Information Model - MOVE and GET).

A C-MOVE sends to a desktop's AE title (``dcmdb desktops``: its host and port) over an
association of its own; a C-GET sends back on the requestor's association, on the storage
contexts where it took the SCP role. Either sends what the calling desktop sees and, for a
C-MOVE, what the destination may receive (both desktops' labs), each archived data set as
stored (`outgoing`, `sending`). Statuses (PS3.4 C.4.2.1.5, C.4.3.1.4), decided here and,
for the outcome of the sub-operations, in `suboperations`; every failure, refusal, cancel
and warning carries an Error Comment (0000,0902):

======  ==============================================================
0xFF00  pending: after each sub-operation, with the numbers of remaining,
        completed, failed and warning sub-operations
0x0000  every sub-operation completed (or nothing matched: zero of each)
0xB000  sub-operations complete, one or more failed or warned: Failed SOP
        Instance UID List (0008,0058) in the identifier
0xA702  every sub-operation failed, or more than 65535 instances match
0xFE00  cancelled by the desktop's C-CANCEL, with the counts so far
0x0124  refused: the calling AE title and host are not a desktop, or the
        destination may receive none of the lab's studies that matched
0xA801  C-MOVE refused: the move destination is no desktop's AE title
0xA900  the identifier does not fit (level, unique keys, UIDs)
0xC000  unable to process: the catalog cannot be read now, or the move
        destination cannot be reached (host and port named)
======  ==============================================================

Served through the transport's ``services`` (`transport.reactor`), not pynetdicom's
Query/Retrieve service class: that one re-encodes every data set it sends, answers an
unreachable destination as an unknown one without a comment, and sends through
pynetdicom's slowest path. Every retrieve is recorded in the audit trail, one record per
study, as ``desktop:<AE title>``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from services.receiver.desktops import Desktops
from services.receiver.retrievable import (
    IdentifierRefused,
    Retrievable,
    RetrieveKeys,
    retrievable,
)
from services.receiver.sending import DestinationUnreachable, StoreAssociation
from services.receiver.sending_back import SendingBack
from services.receiver.settings import ReceiverSettings
from services.receiver.suboperations import Answers, Retrieve, Tally, run_sub_operations
from services.receiver.transport import StoreAnswer
from shared.audit_trail import AuditRecord, AuditTrail
from shared.catalog.states import AuditAction
from shared.dimse_status import (
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    MOVE_DESTINATION_UNKNOWN,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES_SUBOPERATIONS,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from shared.keys import DesktopEntry

log = logging.getLogger("dcmdb.receiver.retrieve")

_MAX_SUBOPERATIONS = 65535  # the counts are US
# The presentation contexts the receiver accepts for them.
RETRIEVE_MODELS = (
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelGet,
)


@dataclass(frozen=True)
class RetrieveSettings:
    ae_title: str  # the receiver's, calling the move destination
    archive_root: Path
    connect_timeout: float  # for a move destination's association
    answer_timeout: float  # for each of its answers

    @classmethod
    def of(cls, settings: ReceiverSettings) -> RetrieveSettings:
        return cls(
            settings.ae_title,
            settings.archive_root,
            settings.acse_timeout,
            settings.network_timeout,
        )


class Retrieval:
    """Serves the desktops' C-MOVE and C-GET requests."""

    def __init__(
        self,
        settings: RetrieveSettings,
        desktops: Desktops,
        catalog: sessionmaker[Session],
        audit: AuditTrail | None,
    ) -> None:
        self._settings = settings
        self._desktops = desktops
        self._catalog = catalog
        self._audit = audit

    def services(self) -> dict[type, Callable[[Association, Retrieve, PresentationContext], None]]:
        return {C_MOVE: self.move, C_GET: self.get}

    def move(self, assoc: Association, request: Retrieve, context: PresentationContext) -> None:
        answers = Answers(assoc, request, context)
        if (caller := self._caller(answers)) is None:
            return
        destination = str(cast(C_MOVE, request).MoveDestination or "").strip()
        tally = self._move(answers, caller, destination)
        self._record(answers, caller, tally, destination)

    def get(self, assoc: Association, request: Retrieve, context: PresentationContext) -> None:
        answers = Answers(assoc, request, context)
        if (caller := self._caller(answers)) is None:
            return
        tally = None
        if (found := self._found(answers, caller)) is not None:
            tally = Tally(found)
            run_sub_operations(answers, tally, found, SendingBack(assoc).send)
        self._record(answers, caller, tally, None)

    def _move(self, answers: Answers, caller: DesktopEntry, destination_ae: str) -> Tally | None:
        """Answer a C-MOVE; its sub-operations (None: refused before any matching)."""
        destination = self._desktops.destination(destination_ae)
        if destination is None:
            answers.refuse(MOVE_DESTINATION_UNKNOWN, f"{destination_ae[:16]} is no dcmdb desktop")
            return None
        if (found := self._found(answers, caller)) is None:
            return None
        tally = Tally(found)
        sendable = [i for i in found if destination.sees(i.lab)]
        if found and not sendable:
            answers.refuse(NOT_AUTHORIZED, _may_not_receive(destination, found[0].lab))
            return tally
        for instance in found:
            if not destination.sees(instance.lab):
                tally.count(instance, _refused(destination, instance.lab))
        if not sendable:  # nothing matched
            answers.final(SUCCESS, None, tally)
            return tally
        try:
            store = StoreAssociation.open(
                destination.host,
                destination.port,
                destination.ae_title,
                self._settings.ae_title,
                {i.outgoing.kind for i in sendable},
                connect_timeout=self._settings.connect_timeout,
                answer_timeout=self._settings.answer_timeout,
            )
        except DestinationUnreachable as exc:
            log.warning("C-MOVE from %s to %s: %s", caller.ae_title, destination_ae, exc)
            tally.lost(sendable, str(exc))
            answers.final(UNABLE_TO_PROCESS, str(exc), tally)
            return tally
        originator = (caller.ae_title, cast(int, answers.request.MessageID))
        try:
            run_sub_operations(
                answers,
                tally,
                sendable,
                lambda instance, message_id, meanwhile: store.send(
                    instance, message_id, originator, meanwhile
                ),
                ready=store.ready,
            )
        finally:
            store.release()
        return tally

    def _caller(self, answers: Answers) -> DesktopEntry | None:
        """The desktop that asks; None once refused."""
        host = str(answers.assoc.requestor.address)
        desktop = self._desktops.calling(answers.calling_ae, host)
        if desktop is None:
            answers.refuse(NOT_AUTHORIZED, f"{answers.calling_ae} at {host} is not a dcmdb desktop")
        return desktop

    def _found(self, answers: Answers, caller: DesktopEntry) -> list[Retrievable] | None:
        """What the identifier names among the caller's studies; None once refused."""
        try:
            keys = RetrieveKeys.of(answers.identifier(), answers.patient_root)
        except IdentifierRefused as exc:
            answers.refuse(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
            return None
        except Exception as exc:  # pydicom decodes lazily: any element may fail
            log.debug("undecodable %s identifier: %s", answers.name, exc)
            answers.refuse(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "the identifier cannot be decoded")
            return None
        try:
            with self._catalog() as session:
                found = retrievable(session, keys, caller.lab_set, self._settings.archive_root)
        except SQLAlchemyError as exc:
            log.error("%s: the catalog cannot be read: %s", answers.name, exc)
            answers.refuse(UNABLE_TO_PROCESS, "the catalog cannot be read now; try again")
            return None
        if len(found) > _MAX_SUBOPERATIONS:
            answers.refuse(
                OUT_OF_RESOURCES_SUBOPERATIONS,
                f"{len(found)} instances match: retrieve fewer at once",
            )
            return None
        return found

    def _record(
        self,
        answers: Answers,
        caller: DesktopEntry,
        tally: Tally | None,
        destination: str | None,
    ) -> None:
        """Log the outcome; one audit record per study (one without a study when none)."""
        if tally is not None:
            log.info(
                "%s at %s level from %s%s: %d instances of %d studies, %d completed, "
                "%d failed, %d warning, status 0x%04X in %.3f s",
                answers.name,
                answers.level,
                caller.ae_title,
                f" to {destination}" if destination else "",
                tally.total,
                len(tally.study_uids),
                tally.completed,
                tally.failed,
                tally.warning,
                answers.status,
                time.monotonic() - answers.started,
            )
        if self._audit is None:
            return
        studies: list[str | None] = [*tally.study_uids] if tally else []
        for study_uid in studies or [None]:
            instances, size = tally.sent.get(study_uid, (0, 0)) if tally and study_uid else (0, 0)
            self._audit.add(
                AuditRecord(
                    at=dt.datetime.now(dt.UTC),
                    key_name=f"desktop:{caller.ae_title}",
                    action=AuditAction.MOVE if answers.is_move else AuditAction.GET,
                    study_uid=study_uid,
                    series_uid=None,
                    job_id=None,
                    status=answers.status,
                    bytes_sent=size,
                    client=str(answers.assoc.requestor.address),
                    instances=instances,
                    destination=destination,
                )
            )


def _refused(destination: DesktopEntry, lab: str) -> StoreAnswer:
    """A sub-operation not performed: the destination may not receive the lab's studies."""
    return StoreAnswer(None, NOT_AUTHORIZED, _may_not_receive(destination, lab))


def _may_not_receive(destination: DesktopEntry, lab: str) -> str:
    return f"{destination.ae_title} may not receive lab {lab}"

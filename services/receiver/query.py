"""dcmdb's C-FIND SCP: the labs' desktops find their studies (Study Root and Patient Root
Query/Retrieve Information Model - FIND).

C-FIND statuses (PS3.4 C.4.1.1.4), decided here and nowhere else; every failure carries
an Error Comment (0000,0902) saying why:

======  ==============================================================
0xFF00  a match; every key of the identifier was matched and returned as asked
0xFF01  a match; some optional key was not supported (returned empty, or not
        matched on: see `levels`)
0x0000  no more matches
0xFE00  cancelled by the desktop's C-CANCEL
0x0124  refused: the calling AE title and host are not a desktop (`dcmdb desktops`)
0xA900  the identifier does not fit: no or a wrong QueryRetrieveLevel, a unique
        key of a level above missing, a value no matching rule reads
0xC000  unable to process: the catalog cannot be read now
0xC210  the identifier cannot be decoded
======  ==============================================================

A desktop finds only the studies of its labs that are not being evicted; another lab's
study is simply not found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.events import EventHandlerType
from sqlalchemy.exc import SQLAlchemyError

from services.receiver import metrics
from services.receiver.desktops import Desktops
from services.receiver.levels import IdentifierRefused, Model, Query, parse
from services.receiver.search import CatalogSearch
from shared.dimse_status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    NOT_AUTHORIZED,
    PENDING,
    PENDING_WITH_WARNING,
    SOP_CLASS_NOT_SUPPORTED,
    UNABLE_TO_PROCESS,
    with_comment,
)

log = logging.getLogger(__name__)

Answer = tuple[int | Dataset, bytes | None]


class FindService:
    def __init__(self, search: CatalogSearch, desktops: Desktops) -> None:
        self._search = search
        self._desktops = desktops

    def handlers(self) -> list[EventHandlerType]:
        return [(evt.EVT_C_FIND, self.on_find), (evt.EVT_SOP_EXTENDED, on_extended_negotiation)]

    def on_find(self, event: evt.Event) -> Iterator[Answer]:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        host = str(event.assoc.requestor.address)
        desktop = self._desktops.calling(calling_ae, host)
        if desktop is None:
            log.warning("C-FIND from %s at %s refused: not a desktop", calling_ae, host)
            metrics.QUERIES.labels("none", "refused").inc()
            yield failure(NOT_AUTHORIZED, f"{calling_ae} at {host} is not a dcmdb desktop")
            return
        query = _query(cast(C_FIND, event.request), event)
        if isinstance(query, Refusal):
            log.warning("C-FIND from %s refused: %s", calling_ae, query.comment)
            metrics.QUERIES.labels("none", "refused").inc()
            yield failure(query.status, query.comment)
            return
        level, started, found = query.level.name, time.perf_counter(), 0
        status = PENDING_WITH_WARNING if query.unsupported else PENDING
        outcome = "failed"  # until it ends otherwise: an exception, the peer gone
        try:
            explicit = event.context.transfer_syntax == ExplicitVRLittleEndian
            for answer in self._search.answers(query, desktop.lab_set, explicit=explicit):
                if event.is_cancelled:
                    outcome = "cancelled"
                    yield CANCEL, None
                    return
                found += 1
                yield status, answer
            outcome = "answered"
        except SQLAlchemyError as exc:
            log.error("C-FIND from %s: the catalog cannot be read: %s", calling_ae, exc)
            yield failure(UNABLE_TO_PROCESS, "the catalog cannot be read now; try again")
        finally:
            metrics.QUERIES.labels(level, outcome).inc()
            metrics.QUERY_MATCHES.labels(level).inc(found)
            log.info(
                "C-FIND at %s level from %s %s: %d matches in %.3f s",
                level,
                calling_ae,
                outcome,
                found,
                time.perf_counter() - started,
            )


@dataclass(frozen=True)
class Refusal:
    status: int
    comment: str


def on_extended_negotiation(event: evt.Event) -> dict[str, bytes]:
    """SOP Class Extended Negotiation of the FIND models (PS3.4 C.5.1.1.1): combined
    date-time matching when asked; relational queries, fuzzy semantic matching of names
    and timezone adjustment never (a name's case is ignored all the same: `matching`)."""
    models = {model.value for model in Model}
    return {
        uid: _accepted(info)
        for uid, info in cast(dict[str, bytes], event.app_info).items()  # type: ignore[attr-defined]
        if str(uid) in models
    }


def _accepted(requested: bytes) -> bytes:
    return bytes([0, 1 if requested[1:2] == b"\x01" else 0, 0, 0][: max(len(requested), 1)])


def _combined_date_time(event: evt.Event, model: Model) -> bool:
    extended = cast(dict[str, bytes], event.assoc.requestor.sop_class_extended)
    requested = extended.get(model.value, b"")
    return _accepted(requested)[1:2] == b"\x01"


def _query(request: C_FIND, event: evt.Event) -> Query | Refusal:
    try:
        model = Model(str(request.AffectedSOPClassUID))
    except ValueError:
        return Refusal(SOP_CLASS_NOT_SUPPORTED, "only Study Root and Patient Root FIND")
    try:
        combined = _combined_date_time(event, model)
        return parse(model, event.identifier, combined_date_time=combined)
    except IdentifierRefused as exc:
        return Refusal(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
    except Exception as exc:  # pydicom decodes lazily: any element may fail to read
        log.debug("undecodable C-FIND identifier: %s", exc)
        return Refusal(CANNOT_UNDERSTAND, "the identifier cannot be decoded")


def failure(status: int, comment: str) -> Answer:
    """A failure status with its Error Comment, as pynetdicom sends it."""
    return with_comment(status, comment), None

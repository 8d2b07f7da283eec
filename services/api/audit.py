"""The audit trail of the API: each answer that read patient data or changed something, with
who asked (the key's name, the client's address), what (the action, the study, series or
job), when the answer ended, its HTTP status and the body bytes that went out.

A route says what it does where it declares its key, as one more dependency::

    @router.get("/studies/{study_uid}", dependencies=[*READ, audited(AuditAction.STUDY_READ)])

Run once the key is known, the dependency marks the request with the key's name, the action
and the UIDs of its path (``study_uid``, ``series_uid``, ``job_id``); a route that learns
more as it runs (the job it queued) adds it with `audit_note`, which needs no argument but
what it notes: the request is found in the context `AuditMiddleware` sets for it. The
middleware completes the mark when the answer ends, or is cut, with the status and the
bytes handed to the server, and gives it to the application's `AuditTrail`, which writes
it behind (shared/audit_trail.py). So a download records the bytes actually sent,
however it is streamed, and no route has to measure anything.

What is recorded: every answer of a marked route once its key passed (a request refused for
its key, 401 or 403, is not). The UIDs only with an answer that succeeded: a UID that
failed may be anything a caller typed into the path, a patient's ID included. A request
that stored instances (STOW-RS) is one record per study it stored into, whatever its
answer. Never a query
parameter or a body (a listing's filters, a retrieval's patient ID): only what the route
hands over.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.access import CallerDep
from shared.audit_trail import AuditRecord, AuditTrail
from shared.catalog.states import AuditAction
from shared.keys import Caller


@dataclass
class _Mark:
    key_name: str
    action: AuditAction
    path: dict[str, Any] = field(default_factory=dict)  # as typed: kept only on success
    noted: dict[str, Any] = field(default_factory=dict)
    # The studies the route changed (stored instances into): one record each, whatever the
    # answer, since the change stays whether or not the request as a whole succeeded.
    changed: list[str] = field(default_factory=list)

    def records(self, status: int, bytes_sent: int, client: str | None) -> list[AuditRecord]:
        known = {**self.path, **self.noted} if status < 400 else {}  # a form's 303 too
        job_id = known.get("job_id")
        record = AuditRecord(
            at=dt.datetime.now(dt.UTC),
            key_name=self.key_name,
            action=self.action,
            study_uid=known.get("study_uid"),
            series_uid=known.get("series_uid"),
            job_id=None if job_id is None else int(job_id),
            status=status,
            bytes_sent=bytes_sent,
            client=client,
        )
        return [replace(record, study_uid=uid) for uid in self.changed] or [record]


@dataclass
class _Answering:
    """The request being answered, as the middleware and the routes share it."""

    mark: _Mark | None = None  # set when the route is audited and the key passed


# Set by the middleware for each request; the routes' threads see it in their copy of the
# context, and change the very object it holds.
_answering: ContextVar[_Answering | None] = ContextVar("dcmdb_audit_answering", default=None)


def audited(action: AuditAction) -> Any:
    """The dependency that puts a route's answers into the audit trail as `action`."""

    def mark(request: Request, caller: CallerDep) -> None:
        mark_answer(request, caller, action)

    return Depends(mark)


def mark_answer(request: Request, caller: Caller, action: AuditAction) -> None:
    """Mark the request being answered as `action` by `caller`, with the UIDs of its path;
    for a dependency that knows the caller another way (the web page's visitor)."""
    answering = _answering.get()
    if answering is None:
        raise RuntimeError("an audited route needs AuditMiddleware")
    path: dict[str, Any] = {
        name: request.path_params[name]
        for name in ("study_uid", "series_uid", "job_id")
        if name in request.path_params
    }
    answering.mark = _Mark(caller.name, action, path)


def audit_note(
    *,
    study_uid: str | None = None,
    job_id: int | None = None,
    action: AuditAction | None = None,
    changed: Sequence[str] = (),
) -> None:
    """What an audited route learnt as it ran: the study it acted on, the job it queued,
    what it did after all (a form that pins or unpins), or the studies it changed (one
    record each). Called from a request that is not audited, it notes nothing."""
    answering = _answering.get()
    if answering is None or answering.mark is None:
        return
    if action is not None:
        answering.mark.action = action
    answering.mark.changed.extend(changed)
    answering.mark.noted.update(
        {
            name: value
            for name, value in (("study_uid", study_uid), ("job_id", job_id))
            if value is not None
        }
    )


class AuditMiddleware:
    """Completes a marked request's record as its answer ends, however it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers when the application fails before it answers
        sent = 0

        async def sending(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]  # answered, whether or not the client is there
            await send(message)  # bytes count once handed over: a send that fails sent none
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.pathsend":  # a server that sends files
                sent += os.stat(message["path"]).st_size

        answering = _Answering()
        token = _answering.set(answering)
        try:
            await self.app(scope, receive, sending)
        finally:
            _answering.reset(token)
            if answering.mark is not None:
                client = scope.get("client")
                trail: AuditTrail = scope["app"].state.audit_trail
                peer = client[0] if client else None
                for record in answering.mark.records(status, sent, peer):
                    trail.add(record)

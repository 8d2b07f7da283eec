"""Routes of lab webhooks (admin only): register, list and remove them, and read each
one's delivery log. The notifier service recognises the events and delivers them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from services.api.dependencies import (
    ADMIN,
    CallerDep,
    SessionDep,
    WriterSessionDep,
    not_found_answer,
)
from services.api.schemas import NewWebhook, Problem, Webhook, WebhookDelivery, WebhookRequest
from shared import webhooks
from shared.catalog import webhooks as rows
from shared.catalog.states import DeliveryState

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

WebhookId = Annotated[int, Path(ge=1, le=2**31 - 1, description="A webhook id")]
_NOT_FOUND = not_found_answer("No such webhook")


def _view(hook: rows.Webhook) -> Webhook:
    return Webhook(
        id=hook.id,
        lab=hook.lab,
        url=hook.url,
        events=sorted(hook.event_set),
        include_patient=hook.include_patient,
        created_at=hook.created_at,
        created_by=hook.created_by,
    )


def _found(session: SessionDep, webhook_id: int) -> rows.Webhook:
    hook = session.get(rows.Webhook, webhook_id)
    if hook is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook {webhook_id}")
    return hook


@router.post(
    "",
    dependencies=ADMIN,
    status_code=status.HTTP_201_CREATED,
    response_model=NewWebhook,
    responses={400: {"model": Problem, "description": "The body is not JSON"}},
)
def register_webhook(
    body: WebhookRequest, session: WriterSessionDep, caller: CallerDep
) -> NewWebhook:
    """Post the lab's events to a URL, each signed with a new secret (answered this once)."""
    with session.begin():
        hook = webhooks.register(
            session,
            lab=body.lab,
            url=str(body.url),
            events=body.events,
            include_patient=body.include_patient,
            created_by=caller.name,
        )
        return NewWebhook(**_view(hook).model_dump(), secret=hook.secret)


@router.get("", dependencies=ADMIN, response_model=list[Webhook])
def list_webhooks(session: SessionDep) -> list[Webhook]:
    return [_view(hook) for hook in webhooks.registered(session)]


@router.get("/{webhook_id}", dependencies=ADMIN, response_model=Webhook, responses=_NOT_FOUND)
def get_webhook(webhook_id: WebhookId, session: SessionDep) -> Webhook:
    return _view(_found(session, webhook_id))


@router.delete(
    "/{webhook_id}",
    dependencies=ADMIN,
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=_NOT_FOUND,
)
def delete_webhook(webhook_id: WebhookId, session: WriterSessionDep) -> Response:
    """Remove the webhook and its delivery log; what was still pending is not sent."""
    with session.begin():
        if not webhooks.remove(session, webhook_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook {webhook_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    dependencies=ADMIN,
    response_model=list[WebhookDelivery],
    responses=_NOT_FOUND,
)
def list_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    state: Annotated[DeliveryState | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[WebhookDelivery]:
    """The webhook's deliveries, the newest first, with how each went."""
    _found(session, webhook_id)
    return [
        WebhookDelivery(
            delivery_id=d.delivery_id,
            event=d.event,
            state=d.state,
            study_uid=d.study_uid,
            series_uid=d.series_uid,
            retrieval_id=d.retrieval_id,
            attempts=d.attempts,
            last_status=d.last_status,
            last_error=d.last_error,
            created_at=d.created_at,
            next_attempt_at=d.next_attempt_at if d.state == DeliveryState.PENDING else None,
            delivered_at=d.delivered_at,
        )
        for d in webhooks.delivery_log(session, webhook_id, state, limit)
    ]

"""Signing in with a key, and out.

The sign-in form is protected like every other: GET /signin gives the browser a session
that is not yet signed in, and its CSRF token goes into the form. A sign-in starts a new
session (a new id); signing out removes the cookie.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from services.api.web.pages import (
    PageError,
    checked_form,
    cookies,
    local_path,
    open_without_keys,
    render,
)
from services.api.web.session import ANONYMOUS_NAME, WebSession, signed_in

router = APIRouter(include_in_schema=False)


@router.get("/signin")
def signin_form(request: Request, next: str | None = None) -> Response:  # noqa: A002
    return _form(request, local_path(next), status.HTTP_200_OK)


@router.post("/signin")
async def signin(request: Request) -> Response:
    session = cookies(request).read(request)
    if session is None:
        raise PageError(
            status.HTTP_403_FORBIDDEN,
            "The sign-in form has expired or cookies are off: open the sign-in page again.",
        )
    fields = await checked_form(request, session)
    back = local_path(fields.get("next"))
    if open_without_keys(request):
        new = WebSession.fresh(ANONYMOUS_NAME, "-")
    else:
        key = fields.get("key", "").strip()
        caller = request.app.state.keys.caller(key) if key else None
        if caller is None:
            return _form(request, back, status.HTTP_401_UNAUTHORIZED, "Unknown or revoked key.")
        new = signed_in(caller, key)
    answer = RedirectResponse(back, status.HTTP_303_SEE_OTHER)
    cookies(request).write(answer, request, new)
    return answer


@router.post("/signout")
async def signout(request: Request) -> Response:
    session = cookies(request).read(request)
    if session is not None:
        await checked_form(request, session)
    answer = RedirectResponse("/signin", status.HTTP_303_SEE_OTHER)
    cookies(request).clear(answer, request)
    return answer


def _form(request: Request, back: str, status_code: int, problem: str = "") -> Response:
    """The form, with a session of its own for its CSRF token when the browser has none."""
    session = cookies(request).read(request)
    fresh = session is None
    if session is None:
        session = WebSession.fresh()
    answer = render(
        request,
        "signin.html",
        None,
        status_code,
        back=back,
        problem=problem,
        open_api=open_without_keys(request),
        signin_token=cookies(request).csrf_token(session),
    )
    if fresh:
        cookies(request).write(answer, request, session)
    return answer

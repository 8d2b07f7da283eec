"""What every page shares: who is looking (`Visitor`), the templates, the answer for what
is wrong (a page with a 4xx status, never a JSON body or a 500), and checked forms.

A page needs a web session (`services.api.web.session`); without a valid one it sends
the browser to the sign-in form and back. Pages carry headers that keep them out of
caches and frames and let them load nothing from anywhere but dcmdb.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Response, status
from fastapi.templating import Jinja2Templates

from services.api.access import ANONYMOUS
from services.api.audit import mark_answer
from services.api.web.session import (
    CSRF_FIELD,
    SessionCookies,
    WebSession,
    form_fields,
    holder,
)
from shared.catalog.states import AuditAction
from shared.keys import Caller

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",  # pages show patient names
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_PAGE_PREFIXES = ("/web/",)
_PAGE_PATHS = frozenset({"/", "/signin", "/signout"})


class SignInNeeded(Exception):
    """No valid session: the browser goes to the sign-in form, and back after it."""

    def __init__(self, back: str) -> None:
        self.back = back


class PageError(Exception):
    """What a page answers when it cannot show what was asked: a status and a sentence."""

    def __init__(self, status_code: int, message: str) -> None:
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class Visitor:
    """Who looks at a page: the key's caller, the session and its CSRF token."""

    caller: Caller
    session: WebSession
    csrf_token: str


def is_page(request: Request) -> bool:
    path = request.url.path
    return path in _PAGE_PATHS or path.startswith(_PAGE_PREFIXES)


def cookies(request: Request) -> SessionCookies:
    return request.app.state.web_sessions  # type: ignore[no-any-return]


def open_without_keys(request: Request) -> bool:
    """The API answers without keys (none configured, loopback only): so does the page."""
    return not request.app.state.keys.enabled and bool(request.app.state.open_without_keys)


def _visitor(request: Request) -> Visitor:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    session = cookies(request).read(request)
    if session is None or session.key_name is None:
        raise SignInNeeded(here)
    caller = ANONYMOUS if open_without_keys(request) else holder(request, session)
    if caller is None:  # the key was revoked, or its name given to a new key
        raise SignInNeeded(here)
    return Visitor(caller, session, cookies(request).csrf_token(session))


VisitorDep = Annotated[Visitor, Depends(_visitor)]


def _admin(visitor: VisitorDep) -> Visitor:
    if not visitor.caller.is_admin:
        raise PageError(status.HTTP_403_FORBIDDEN, "This page needs an admin key.")
    return visitor


AdminDep = Annotated[Visitor, Depends(_admin)]


def audited_page(action: AuditAction, *, admin: bool = False) -> Any:
    """The dependency that puts a page's answers into the audit trail, as `audited` puts
    the API's (services.api.audit): once the visitor, and for an admin page its scope,
    passed."""
    if admin:

        def mark_admin(request: Request, visitor: AdminDep) -> None:
            mark_answer(request, visitor.caller, action)

        return Depends(mark_admin)

    def mark(request: Request, visitor: VisitorDep) -> None:
        mark_answer(request, visitor.caller, action)

    return Depends(mark)


async def checked_form(request: Request, session: WebSession) -> dict[str, str]:
    """A posted form's fields, once its CSRF token is the session's."""
    fields = await form_fields(request)
    if not cookies(request).csrf_valid(session, fields.get(CSRF_FIELD)):
        raise PageError(
            status.HTTP_403_FORBIDDEN,
            "The form was not sent from this session's page: reload the page and try again.",
        )
    return fields


def render(
    request: Request,
    name: str,
    visitor: Visitor | None,
    status_code: int = status.HTTP_200_OK,
    **context: Any,
) -> Response:
    return templates.TemplateResponse(
        request,
        name,
        {"visitor": visitor, "csrf_field": CSRF_FIELD, **context},
        status_code=status_code,
        headers=PAGE_HEADERS,
    )


def error_page(request: Request, status_code: int, message: str) -> Response:
    """The page of a refused request; it names no more than the API's answer would."""
    try:
        visitor: Visitor | None = _visitor(request)
    except SignInNeeded:
        visitor = None
    return render(request, "error.html", visitor, status_code, code=status_code, message=message)


def local_path(target: str | None, default: str = "/") -> str:
    """`target` when it is a path on this site, else `default`: a sign-in never sends the
    browser elsewhere."""
    if not target or not target.isprintable() or "\\" in target:
        return default
    if not target.startswith("/") or target.startswith("//"):
        return default
    return target


def sign_in_url(back: str) -> str:
    return "/signin" if back == "/" else f"/signin?next={quote(back, safe='')}"


def _size(value: int | None) -> str:
    if value is None:
        return ""
    amount = float(value)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return ""  # not reached


def _day(value: str | None) -> str:
    """A DICOM date (YYYYMMDD) as 2024-05-01."""
    if not value or len(value) != 8 or not value.isdigit():
        return value or ""
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def _moment(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


templates.env.filters.update(size=_size, day=_day, moment=_moment)

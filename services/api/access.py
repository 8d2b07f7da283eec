"""Who may call the API: bearer keys, each with a scope ("read", or "admin" which includes
read) and the labs it sees (`shared.keys`), or the key a web page session signed in with
(`services.api.web.session`), which sees exactly what that key sees.

With no key configured at all the API is open, as an admin seeing every lab, and
`ApiSettings` allows that on loopback only. Keys are compared by their SHA-256 digest and
never logged.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.parameters import known_parameters_only
from services.api.web import session
from shared.keys import Caller, KeyRing, Scope

_bearer = HTTPBearer(auto_error=False, description="An API key (dcmdb keys add)")
ANONYMOUS = Caller("anonymous", Scope.ADMIN, None)


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller of a request: its bearer key, or the key of its web session."""
    keys: KeyRing = request.app.state.keys
    if not keys.enabled and request.app.state.open_without_keys:
        return ANONYMOUS
    if credentials is None:
        found = await _session_holder(request)
        if found is not None:
            return found
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "an API key is required: send it as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="dcmdb"'},
        )
    caller = keys.caller(credentials.credentials)
    if caller is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown API key",
            headers={"WWW-Authenticate": 'Bearer realm="dcmdb", error="invalid_token"'},
        )
    return caller


async def _session_holder(request: Request) -> Caller | None:
    """The key of the request's web session (the page's thumbnails and downloads are the
    API's own routes); what it changes needs the session's CSRF token as well."""
    cookies = session.cookies_of(request)
    found = cookies.read(request) if cookies is not None else None
    caller = session.holder(request, found) if found is not None else None
    if cookies is None or found is None or caller is None:
        return None
    if not await session.csrf_checked(request, found, cookies):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"a change made with a web session needs its CSRF token (the "
            f"{session.CSRF_HEADER} header or the {session.CSRF_FIELD} field)",
        )
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]
"""Who sent the request; a route filters what it reads by `Caller.labs`."""


def reader(request: Request, caller: CallerDep) -> Caller:
    """Any valid key; unknown parameters are refused after the key, so that a stranger
    learns nothing of the API."""
    known_parameters_only(request)
    return caller


def admin(request: Request, caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this API key lacks the admin scope")
    known_parameters_only(request)
    return caller

"""Who may call the API: bearer keys with a scope, "read" or "admin" (which includes read).

With no key configured the API is open, and `ApiSettings` allows that on loopback only.
Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from typing import Annotated, Any, NoReturn
from urllib.parse import parse_qsl

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

_bearer = HTTPBearer(auto_error=False, description="An API key from DCMDB_API_KEYS")
_GRANTS = {"read": {"read", "admin"}, "admin": {"admin"}}


class Keys:
    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = [(key.encode(), scope) for key, scope in keys.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def scope_of(self, presented: str) -> str | None:
        """The scope of a presented key, None when unknown; every key is compared."""
        candidate = presented.encode()
        found = None
        for key, scope in self._keys:
            if hmac.compare_digest(key, candidate):
                found = scope
        return found


def require(scope: str) -> Callable[..., None]:
    """A dependency that lets a request through only with a key granting `scope`."""
    allowed = _GRANTS[scope]

    def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        keys: Keys = request.app.state.keys
        if not keys.enabled:
            known_parameters_only(request)
            return
        challenge = {"WWW-Authenticate": 'Bearer realm="dcmdb"'}
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "an API key is required: send it as 'Authorization: Bearer <key>'",
                headers=challenge,
            )
        granted = keys.scope_of(credentials.credentials)
        if granted is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "unknown API key",
                headers={"WWW-Authenticate": 'Bearer realm="dcmdb", error="invalid_token"'},
            )
        if granted not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this API key lacks the {scope} scope")
        known_parameters_only(request)  # after the key: a stranger learns nothing of the API

    return check


def known_parameters_only(request: Request) -> None:
    """A misspelt filter is a 422, not a silently unfiltered listing; so is one given twice,
    of which FastAPI would silently keep the last (``modality=MR&modality=CT`` is not both)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known = {param.alias for param in _query_params(dependant)}
    given: set[str] = set()
    # Parsed again: Starlette drops a parameter with an empty name, which is unknown too.
    for name, value in parse_qsl(request.url.query, keep_blank_values=True):
        if name not in known:
            accepted = ", ".join(sorted(known)) or "none"
            _refuse(
                name, value, "extra_forbidden", f"unknown parameter; this route accepts: {accepted}"
            )
        if name in given:
            _refuse(name, value, "value_error", "given more than once; give it once")
        given.add(name)


def _refuse(name: str, value: str, kind: str, message: str) -> NoReturn:
    """A 422 in FastAPI's own shape, naming the query parameter."""
    raise RequestValidationError(
        [{"type": kind, "loc": ("query", name), "msg": message, "input": value}]
    )


def _query_params(dependant: Any) -> Iterator[Any]:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_params(sub)


# Route dependencies: a key with this scope, or none (parameters still checked).
READ = [Depends(require("read"))]
ADMIN = [Depends(require("admin"))]
OPEN = [Depends(known_parameters_only)]


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]
"""A catalog session for the request, closed when it is answered."""


def _writer_session(request: Request) -> Iterator[Session]:
    with request.app.state.writer_sessions() as session:
        yield session


WriterSessionDep = Annotated[Session, Depends(_writer_session)]
"""The same, for a route that writes to the catalog."""

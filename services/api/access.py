"""Who may call the API: bearer keys with a scope, "read" or "admin" (which includes read).

With no key configured the API is open, and `ApiSettings` allows that on loopback only.
Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.parameters import known_parameters_only

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

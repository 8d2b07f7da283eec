"""Web sessions: which key a browser signed in with, in a cookie that never holds the key.

The cookie (``dcmdb_session``: httpOnly, SameSite=Strict, Secure when served over https)
holds a value signed with HMAC-SHA256 and stamped with its time (itsdangerous): a random
session id and, once signed in, the key's name and the first 16 hex digits of the key's
SHA-256 digest. Each request resolves it against the `KeyRing` again, so a key revoked,
or a name given to a new key, ends its sessions at once; a value older than
``DCMDB_SESSION_HOURS`` is refused.

Every state-changing request made with the cookie carries a CSRF token: an HMAC of the
session id, in a hidden form field (``csrf_token``) or an ``X-CSRF-Token`` header. The
secret is ``DCMDB_SESSION_SECRET``, or one generated once into the data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from services.api.settings import ApiSettings
from shared.keys import Caller, KeyRing, digest

COOKIE = "dcmdb_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_FILE = "web-session.secret"
ANONYMOUS_NAME = "anonymous"  # a session on an API open without keys
_DIGEST_PREFIX = 16
_FORM_LIMIT = 64 * 1024  # bytes of a form body; the page's forms send a few dozen


@dataclass(frozen=True)
class WebSession:
    """A browser's session: its id, and the key it signed in with (None before)."""

    sid: str
    key_name: str | None = None
    key_digest: str | None = None  # the first 16 hex digits

    @classmethod
    def fresh(cls, key_name: str | None = None, key_digest: str | None = None) -> WebSession:
        return cls(secrets.token_urlsafe(18), key_name, key_digest)


class SessionCookies:
    """Writes, reads and checks the session cookie and its CSRF tokens."""

    def __init__(self, secret: bytes, lifetime: timedelta) -> None:
        self._secret = secret
        self._lifetime = lifetime
        self._serializer = URLSafeTimedSerializer(
            secret, salt="dcmdb-web-session", signer_kwargs={"digest_method": hashlib.sha256}
        )

    @classmethod
    def of(cls, settings: ApiSettings) -> SessionCookies:
        configured = settings.session_secret
        secret = (
            configured.get_secret_value().encode()
            if configured is not None
            else secret_in(settings.data_dir)
        )
        return cls(secret, timedelta(hours=settings.session_hours))

    def read(self, request: Request) -> WebSession | None:
        """The request's session; None without a cookie, or with a forged or expired one."""
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            raw = self._serializer.loads(value, max_age=int(self._lifetime.total_seconds()))
        except BadSignature:  # also an expired one (SignatureExpired)
            return None
        if not isinstance(raw, list) or len(raw) != 3:
            return None
        sid, name, prefix = raw
        if not isinstance(sid, str) or not all(isinstance(v, str | None) for v in (name, prefix)):
            return None
        return WebSession(sid, name, prefix)

    def write(self, response: Response, request: Request, session: WebSession) -> None:
        value = self._serializer.dumps([session.sid, session.key_name, session.key_digest])
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(self._lifetime.total_seconds()),
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    def clear(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict"
        )

    def csrf_token(self, session: WebSession) -> str:
        return hmac.new(self._secret, f"csrf:{session.sid}".encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, session: WebSession, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")


def signed_in(caller: Caller, key: str) -> WebSession:
    """A new session for the holder of `key`; a new id, so that no session id planted
    before the sign-in survives it."""
    return WebSession.fresh(caller.name, digest(key)[:_DIGEST_PREFIX])


def holder(request: Request, session: WebSession) -> Caller | None:
    """Whose session this is now: the key it signed in with, while that key is valid."""
    keys: KeyRing = request.app.state.keys
    if session.key_name is None or session.key_digest is None:
        return None
    return keys.holder(session.key_name, session.key_digest)


def cookies_of(request: Request) -> SessionCookies | None:
    """The application's session cookies; None in an application built without the page."""
    return getattr(request.app.state, "web_sessions", None)


async def form_fields(request: Request) -> dict[str, str]:
    """An URL-encoded form body's fields (the page's forms are all of this kind); {} for any
    other body. A field given twice keeps its first value."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > _FORM_LIMIT:
        return {}
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, value)
    return fields


async def csrf_checked(request: Request, session: WebSession, cookies: SessionCookies) -> bool:
    """Whether an unsafe request of this session carries its CSRF token."""
    if request.method in SAFE_METHODS:
        return True
    token = request.headers.get(CSRF_HEADER) or (await form_fields(request)).get(CSRF_FIELD)
    return cookies.csrf_valid(session, token)


def secret_in(data_dir: Path) -> bytes:
    """The data directory's session secret, generated on first use (mode 0600). A new file
    appears whole or not at all (written aside, then linked): several API workers starting
    at once agree on one secret."""
    path = data_dir / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    aside = data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker's came first
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if len(text) < 32:
        raise ValueError(f"the session secret in {path} is too short; remove it to renew it")
    return text.encode()

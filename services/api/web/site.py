"""The web page joined into the API application: its routes (none in the OpenAPI document),
its static files, its session cookies, and error pages for its paths.

The JSON API answers as before on every other path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response, status
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.api.settings import ApiSettings
from services.api.web import account, admin, browse, docs
from services.api.web.pages import (
    HERE,
    PageError,
    SignInNeeded,
    error_page,
    is_page,
    sign_in_url,
)
from services.api.web.session import SessionCookies

STATIC_URL = "/web/static"

_PARTS = (account.router, browse.router, admin.router, docs.router)
router = APIRouter(include_in_schema=False)
for part in _PARTS:
    router.include_router(part)

_ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def _allowed(path: str) -> list[str]:
    """The methods of every page route of `path` (Starlette names the first route's only)."""
    return sorted(
        method
        for part in _PARTS  # a router lists an included router as one entry
        for route in part.routes
        if isinstance(route, APIRoute) and route.path_regex.match(path)
        for method in route.methods or ()
    )


def install(app: FastAPI, settings: ApiSettings, http_error: _ErrorHandler) -> None:
    """Join the page to `app`; `http_error` is how the API answers an HTTP error elsewhere."""
    app.state.web_sessions = SessionCookies.of(settings)
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="web-static")

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not is_page(request):
            return await http_error(request, exc)
        message = {404: "There is no such page.", 405: "This page cannot be sent that way."}
        answer = error_page(request, exc.status_code, message.get(exc.status_code, str(exc.detail)))
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            answer.headers["Allow"] = ", ".join(_allowed(request.url.path))
        return answer

    async def on_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if not is_page(request):
            return await request_validation_exception_handler(request, exc)
        return error_page(request, status.HTTP_400_BAD_REQUEST, "The address is not valid.")

    async def on_page_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageError)
        return error_page(request, exc.status_code, exc.message)

    async def on_sign_in_needed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInNeeded)
        return RedirectResponse(sign_in_url(exc.back), status.HTTP_303_SEE_OTHER)

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(PageError, on_page_error)
    app.add_exception_handler(SignInNeeded, on_sign_in_needed)

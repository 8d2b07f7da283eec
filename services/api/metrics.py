"""Prometheus metrics of the API process: requests by route and status, and their time."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "dcmdb_api_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
DURATION = Histogram(
    "dcmdb_api_request_duration_seconds",
    "Time to answer an HTTP request (to the start of the body for downloads)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestMetrics:
    """Counts and times every request by its route template (never by the raw path,
    which holds UIDs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500

        async def sending(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                DURATION.labels(scope["method"], template).observe(time.perf_counter() - started)
                REQUESTS.labels(scope["method"], template, str(code)).inc()
            await send(message)

        await self.app(scope, receive, sending)


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST

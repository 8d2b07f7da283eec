"""``dcmdb api``: the REST API, served by uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from services.api.app import create_app
from services.api.settings import ApiSettings, is_loopback
from shared import keys
from shared.service import configured
from shared.settings import load_settings

log = logging.getLogger("dcmdb.api")


def app_from_environment() -> FastAPI:
    """The application as uvicorn's workers build it (settings from the environment)."""
    return create_app(load_settings(ApiSettings))


def main() -> None:
    """Half of `shared.service.serve`: settings and logging. The API has no side port (it
    serves /metrics, /healthz and /readyz itself), and the stop is uvicorn's: it handles
    SIGTERM and SIGINT itself (for its worker processes too), says "Finished server
    process" and raises the signal again once it has stopped, so no line of ours follows."""
    settings = configured("api", ApiSettings)  # a bad setting stops here, before uvicorn starts
    if not settings.keys and not keys.load(settings.keys_path).keys:
        log.warning(
            "no API key configured: the API is open to anyone on this host and listens on "
            "%s only; add keys with `dcmdb keys add` to serve other hosts",
            settings.api_host,
        )
    elif not is_loopback(settings.api_host):
        log.info("API keys required on every request but /healthz, /readyz and /metrics")
    log.info(
        "serving the API on http://%s:%d/ (docs at /docs)", settings.api_host, settings.api_port
    )
    uvicorn.run(
        "services.api.main:app_from_environment",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        workers=settings.api_workers,
        log_config=None,  # our logging configuration, no access log with UIDs at INFO
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )

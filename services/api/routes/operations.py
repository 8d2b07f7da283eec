"""Routes for whoever runs dcmdb: liveness and readiness, open without a key, and the
metrics, for an admin key (their labels name the labs).

Readiness is decided as on every service's side port (`shared.monitoring`): the
dependencies `create_app` declares, each with its status, 503 unless all are ok.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from services.api import metrics
from services.api.dependencies import ADMIN, OPEN, ReadinessDep
from shared.monitoring import readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", dependencies=OPEN, response_model=dict[str, str])
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    dependencies=OPEN,
    response_model=dict[str, str],
    responses={503: {"model": dict[str, str], "description": "Catalog or broker away"}},
)
def readyz(dependencies: ReadinessDep) -> Response:
    """The catalog and the broker are reachable."""
    ready, statuses = readiness(dependencies)
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(statuses, status_code=code)


@router.get("/metrics", dependencies=ADMIN, response_class=Response)
def get_metrics() -> Response:
    """Prometheus metrics of this process; Prometheus sends an admin key
    (`authorization: credentials_file` in its scrape configuration)."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)

"""The DICOMweb service at /dicomweb: its routers, each of one kind of resource, joined by the
application beside the REST API's (services/api/app.py)."""

from __future__ import annotations

from fastapi import APIRouter

from services.api.dicomweb import qido, rendered, stow, wado

ROUTERS: tuple[APIRouter, ...] = (
    qido.router,
    wado.router,
    rendered.router,
    stow.router,
)

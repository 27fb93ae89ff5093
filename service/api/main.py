"""All routers of the HTTP API, assembled into one."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import health, metrics, models, scoring

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(scoring.router)
api_router.include_router(metrics.router)

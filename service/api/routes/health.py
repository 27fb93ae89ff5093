"""Liveness and readiness: always open, never behind the API key."""

from __future__ import annotations

from fastapi import APIRouter

from service import __version__
from service.api.deps import RegistryDep, SettingsDep
from service.api.errors import ApiError, error_responses
from service.api.openapi import DocstringRoute
from service.registry import ModelStatus
from service.schemas import Health, Readiness

router = APIRouter(route_class=DocstringRoute, tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process is up and answering."""
    return Health(version=__version__)


@router.get("/ready", response_model=Readiness, responses=error_responses(503))
async def ready(registry: RegistryDep, settings: SettingsDep) -> Readiness:
    """Readiness: 200 once the models are loaded and at least one serves, else 503."""
    if not registry.loaded:
        raise ApiError(503, "not_ready", "models are still loading", headers={"Retry-After": "2"})
    ready_names = registry.ready_names()
    if not ready_names:
        broken = ", ".join(registry.broken_names()) or "none found"
        raise ApiError(
            503, "no_model_ready", f"no model could be loaded from the models folder (broken: {broken})"
        )
    default = registry.get(settings.default_model)
    return Readiness(
        status="ready",
        models_ready=ready_names,
        models_broken=registry.broken_names(),
        default_model=settings.default_model,
        default_model_ready=default is not None and default.status is ModelStatus.READY,
    )

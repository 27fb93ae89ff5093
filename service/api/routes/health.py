"""Liveness and readiness: always open, never behind the API key."""

from __future__ import annotations

from fastapi import APIRouter

from service import __version__
from service.api.deps import CheckedRegistryDep, SettingsDep
from service.api.errors import ApiError, error_responses
from service.api.openapi import DocstringRoute
from service.logs import log_failures
from service.schemas import Health, Readiness

router = APIRouter(route_class=DocstringRoute, tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process is up and answering."""
    return Health(version=__version__)


@router.get("/ready", response_model=Readiness, responses=error_responses(503))
async def ready(registry: CheckedRegistryDep, settings: SettingsDep) -> Readiness:
    """Readiness: 200 once the models are loaded and at least one serves, else 503.

    A model whose files changed on disk after loading still serves (from memory)
    and is listed under `models_stale`; `log_errors` counts log lines this worker
    could not write (e.g. a full disk), which never stops it serving.
    """
    if not registry.loaded:
        raise ApiError(503, "not_ready", "models are still loading", headers={"Retry-After": "2"})
    if not registry.serving_names():
        broken = ", ".join(registry.broken_names())
        if broken:
            reason = "every model failed to load; GET /v1/models says why"
        else:
            reason = registry.problem or "no model folder was found"
        raise ApiError(503, "no_model_ready", f"no model can serve: {reason} (broken: {broken or 'none'})")
    default = registry.get(settings.default_model)
    return Readiness(
        status="ready",
        models_ready=registry.ready_names(),
        models_stale=registry.stale_names(),
        models_broken=registry.broken_names(),
        default_model=settings.default_model,
        default_model_ready=default is not None and default.serving,
        log_errors=log_failures.snapshot().count,
    )

"""App assembly (`create_app`), the lifespan that loads the models, and `run()` for `asd-serve`.

asd-serve                                   # HOST/PORT or ASD_HOST/ASD_PORT, ASD_* settings
uvicorn --factory service.main:create_app   # the same app under a hand-run uvicorn
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service import __version__
from service.config import Settings
from service.logs import configure_logging, uvicorn_log_config
from service.reload import POLL_S, SIGNAL_ENV, ReloadSignal

# The app's modules (FastAPI, numpy, onnxruntime, ...) are imported in
# `create_app`, not here: `asd-serve` with several workers runs `run()` in a
# master process that only supervises, and its imports are on the cold-start
# path before any worker is spawned (about 1 s of CPU it no longer spends).
if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.metrics import ServiceMetrics
    from service.registry import Registry

logger = logging.getLogger(__name__)

DESCRIPTION = """
Scores recordings of a machine (DCASE 2020 Task 2 style: 10 s, 16 kHz) with
autoencoders trained on its normal sound. A clip whose reconstruction error
is above the model's threshold is **anomalous**; the answer also says where
in the clip (per-second segments) the error is highest.

Send a clip as multipart field `file`, or as the raw body with an audio
Content-Type. When the service has an API key (`ASD_API_KEY`), `/v1/*`
needs it as `X-API-Key` or `Authorization: Bearer`.
Every error answers `{"error": {"code", "message", "request_id"}}`.
"""

TAGS = [
    {"name": "scoring", "description": "Score recordings."},
    {"name": "models", "description": "The detectors being served."},
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "metrics", "description": "Prometheus metrics."},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing heavy happens until its lifespan starts (models load then)."""
    import anyio
    from fastapi_offline import FastAPIOffline

    from service.api.docs import DOCS_STATIC, install_redoc
    from service.api.errors import install_error_handlers
    from service.api.main import api_router
    from service.api.middleware import RequestContextMiddleware
    from service.api.openapi import install_openapi
    from service.api.page import install_page
    from service.metrics import ServiceMetrics
    from service.registry import Registry
    from service.uploads import BodySizeLimitMiddleware

    settings = settings or Settings()
    metrics = ServiceMetrics()
    registry = Registry(settings.models_dir, intra_op_threads=settings.intra_op_threads)
    reload_signal = ReloadSignal.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        app.state.limiter = anyio.CapacityLimiter(settings.scoring_concurrency)
        logger.info(
            "service starting",
            extra={
                "version": __version__,
                "models_dir": str(settings.models_dir),
                "default_model": settings.default_model,
                "intra_op_threads": settings.intra_op_threads,
                "scoring_concurrency": settings.scoring_concurrency,
                "max_upload_size": int(settings.max_upload_size),
                "api_key": settings.api_key is not None,  # whether one is set, never the key
                "multiprocess_metrics": metrics.multiprocess,
            },
        )
        # Load in the background: the server answers /health at once and
        # /ready (503) while the models load, instead of refusing connections.
        async with anyio.create_task_group() as group:
            group.start_soon(_load_models, registry, metrics)
            if reload_signal.path is not None or settings.reload_interval_s:
                group.start_soon(
                    _watch_for_reloads, registry, metrics, reload_signal, settings.reload_interval_s
                )
            yield
            group.cancel_scope.cancel()
        logger.info("service stopped")

    # /docs and /redoc load Swagger UI's and ReDoc's files (and a favicon) from the service
    # itself: they work on a network without internet access.
    app = FastAPIOffline(
        static_url=DOCS_STATIC,
        redoc_url=None,  # install_redoc's page, for its Content-Security-Policy
        title="Machine sound anomaly detection",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # Multipart parts are capped while parsing, before anything is spooled.
        form_limits={"max_files": settings.max_batch_files, "max_fields": 16},
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.reload_signal = reload_signal
    install_error_handlers(app)
    app.include_router(api_router)
    install_page(app)
    install_redoc(app)
    install_openapi(app)

    # Added last = outermost: the request context wraps the size limit, so a
    # 413 from the limit is logged, counted and carries the request id.
    app.add_middleware(BodySizeLimitMiddleware, limit=int(settings.max_upload_size))
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


async def _load_models(registry: Registry, metrics: ServiceMetrics) -> None:
    import anyio

    try:
        # abandon_on_cancel: a shutdown during loading does not wait for it.
        await anyio.to_thread.run_sync(registry.load, abandon_on_cancel=True)
    except Exception:
        # Registry.load already isolates each folder; this is a bug net so
        # the lifespan (and the process) keeps running and /ready says why.
        logger.exception("loading the models failed")
    from service.api.deps import publish_models

    publish_models(registry, metrics)


async def _watch_for_reloads(
    registry: Registry, metrics: ServiceMetrics, signal: ReloadSignal, interval_s: float | None
) -> None:
    """Reload when another worker did, or every `interval_s` (ASD_RELOAD_INTERVAL_S)."""
    import anyio

    from service.api.deps import publish_models
    from service.errors import ReloadInProgressError

    next_scan = time.monotonic() + interval_s if interval_s else None
    while True:
        await anyio.sleep(POLL_S)
        due = next_scan is not None and time.monotonic() >= next_scan
        if not registry.loaded or not (signal.changed() or due):
            continue
        if interval_s:
            next_scan = time.monotonic() + interval_s
        try:
            report = await anyio.to_thread.run_sync(registry.reload, abandon_on_cancel=True)
        except ReloadInProgressError:
            continue  # a request's reload runs: it does the same
        except Exception:
            logger.exception("reloading the models failed")  # the loaded models keep serving
            continue
        if report.changed:
            publish_models(registry, metrics)


def run() -> None:
    """`asd-serve`: uvicorn on HOST:PORT with ASD_WORKERS workers (a socket each on Linux), JSON logs."""
    try:
        settings = Settings()
    except ValidationError as error:
        raise SystemExit(f"invalid configuration:\n{error}") from None
    if settings.workers > 1:
        _share_metrics_between_workers()
        _share_reload_signal()
    import uvicorn  # only the entry point needs it; tests build the app without it

    from service import sockets

    # Several workers on one shared socket do not share a burst of new connections: see service.sockets.
    spread = settings.workers > 1 and settings.reuse_port and sockets.supported()
    serve = sockets.serve if spread else uvicorn.run
    serve(
        "service.main:create_app",
        factory=True,  # every worker builds its own app (and onnxruntime sessions) from the env
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=uvicorn_log_config(settings.log_level),
        access_log=False,  # RequestContextMiddleware logs each request with more fields
        timeout_worker_healthcheck=settings.worker_healthcheck_timeout_s,
        server_header=False,
    )


def _share_metrics_between_workers() -> None:
    # Each worker keeps its own counters; prometheus_client's multiprocess mode
    # has them write to files in one folder that /metrics merges. The folder
    # must be empty at start and known before the workers import
    # prometheus_client, so it is made here, in the parent, and inherited.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    folder = tempfile.mkdtemp(prefix="asd-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def _share_reload_signal() -> None:
    # The workers' common file for "reload now" (service.reload), made before they start.
    if os.environ.get(SIGNAL_ENV):
        return
    folder = tempfile.mkdtemp(prefix="asd-reload-")
    os.environ[SIGNAL_ENV] = os.path.join(folder, "reload")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.main:app` works too, building the app on first access
    # rather than at import (importing this module must stay side-effect free).
    if name == "app":
        return create_app()
    raise AttributeError(name)


if __name__ == "__main__":
    run()

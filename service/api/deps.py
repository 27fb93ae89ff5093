"""Dependencies of the routes, as `Annotated` aliases (`SettingsDep`, `ModelDep`, ...).

They are `async def` although none awaits: FastAPI runs plain `def`
dependencies in its threadpool, a thread hop per dependency for what are
dictionary look-ups.
"""

from __future__ import annotations

import hmac
from typing import Annotated, cast

import anyio
from fastapi import Depends, Path, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Gauge

from service.api.errors import ApiError
from service.audio import Channel
from service.config import Settings
from service.metrics import NO_MACHINE, ServiceMetrics
from service.registry import ModelEntry, Registry
from service.schemas import Detail
from service.scoring import normalize_machine_id

# auto_error=False: a missing key is our 401 in our error shape, and only when a key is set.
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The service's API key (when ASD_API_KEY is set)."
)
_bearer = HTTPBearer(auto_error=False, description="The service's API key as a bearer token.")


# Starlette's `app.state` is untyped; `create_app` and the lifespan put these there.
async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def get_registry(request: Request) -> Registry:
    return cast(Registry, request.app.state.registry)


async def get_metrics(request: Request) -> ServiceMetrics:
    return cast(ServiceMetrics, request.app.state.metrics)


async def get_limiter(request: Request) -> anyio.CapacityLimiter:
    return cast(anyio.CapacityLimiter, request.app.state.limiter)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
LimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_limiter)]


async def require_api_key(
    settings: SettingsDep,
    header_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """401 unless the request carries the configured key (no-op when none is configured)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    offered = [k for k in (header_key, bearer.credentials if bearer else None) if k]
    if not offered:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: send it as X-API-Key or Authorization: Bearer",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # compare_digest: the time taken does not tell how much of a guess was right.
    if not any(hmac.compare_digest(k.encode(), expected) for k in offered):
        raise ApiError(
            401, "unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
        )


async def checked_registry(registry: RegistryDep, metrics: MetricsDep) -> Registry:
    """The registry, after a look at its models' files when one is due (see `Registry.check_files`)."""
    if registry.check_due():
        # stat() is cheap, but a changed file is hashed again: not on the event loop.
        await anyio.to_thread.run_sync(registry.check_files)
        # Every time, not only on a change: the gauges then also heal from any race
        # with the ones set once after loading (service.main._load_models).
        count_models(registry, metrics)
    return registry


def count_models(registry: Registry, metrics: ServiceMetrics) -> None:
    metrics.models.labels("ready").set(len(registry.ready_names()))
    metrics.models.labels("stale").set(len(registry.stale_names()))
    metrics.models.labels("broken").set(len(registry.broken_names()))


def publish_models(registry: Registry, metrics: ServiceMetrics) -> None:
    """Every per-model gauge from what serves now: after the first load and after each reload."""
    count_models(registry, metrics)
    series: dict[Gauge, set[tuple[str, ...]]] = {
        metrics.threshold: set(),
        metrics.false_alarm_rate: set(),
        metrics.calibrated: set(),
        metrics.id_threshold: set(),
    }
    for name in registry.serving_names():
        entry = registry.models[name]
        if entry.detector is None:
            continue
        bundle = entry.detector.bundle
        threshold = bundle.threshold
        history = threshold.calibration_history
        fitted = history[-1].at if history else bundle.training.trained_at
        values: list[tuple[Gauge, tuple[str, ...], float]] = [
            (metrics.threshold, (name,), entry.detector.threshold),
            (metrics.false_alarm_rate, (name,), threshold.target_false_alarm_rate),
            (metrics.calibrated, (name,), fitted.timestamp()),
        ]
        values += [
            (metrics.id_threshold, (name, mid), fit.value) for mid, fit in (threshold.per_id or {}).items()
        ]
        for gauge, labels, value in values:
            gauge.labels(*labels).set(value)
            series[gauge].add(labels)
    # A model a reload unloaded must not keep its series. prometheus_client cannot remove a series
    # in multiprocess mode: there it reads NaN, which no alert or panel takes for a number.
    for gauge, now in series.items():
        for labels in metrics.published.get(gauge, set()) - now:
            if metrics.multiprocess:
                gauge.labels(*labels).set(float("nan"))
            else:
                gauge.remove(*labels)
        metrics.published[gauge] = now


CheckedRegistryDep = Annotated[Registry, Depends(checked_registry)]


async def ready_registry(registry: CheckedRegistryDep) -> Registry:
    if not registry.loaded:
        raise ApiError(
            503, "not_ready", "models are still loading; retry shortly", headers={"Retry-After": "2"}
        )
    return registry


ReadyRegistryDep = Annotated[Registry, Depends(ready_registry)]

ModelName = Annotated[
    str,
    Path(
        description="Model name: a folder under the models folder, as listed by GET /v1/models.",
        examples=["slider"],
    ),
]


def lookup(registry: Registry, name: str) -> ModelEntry:
    """The entry of `name`, or 404; names are only looked up, never joined to a path."""
    entry = registry.get(name)
    if entry is None:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise ApiError(404, "model_not_found", f"no model named {shown!r}; GET /v1/models lists them")
    return entry


async def get_model(name: ModelName, registry: ReadyRegistryDep) -> ModelEntry:
    return lookup(registry, name)


def usable(entry: ModelEntry) -> ModelEntry:
    """The entry if it serves: ready, or stale (its files changed on disk, the loaded copy still serves)."""
    if not entry.serving:
        raise ApiError(503, "model_broken", f"model {entry.name!r} failed to load: {entry.error}")
    return entry


async def get_ready_model(name: ModelName, registry: ReadyRegistryDep) -> ModelEntry:
    return usable(lookup(registry, name))


async def get_default_model(registry: ReadyRegistryDep, settings: SettingsDep) -> ModelEntry:
    entry = registry.get(settings.default_model)
    if entry is None:
        raise ApiError(
            404,
            "model_not_found",
            f"the default model {settings.default_model!r} is not in the models folder",
        )
    return usable(entry)


ModelDep = Annotated[ModelEntry, Depends(get_model)]
ReadyModelDep = Annotated[ModelEntry, Depends(get_ready_model)]
DefaultModelDep = Annotated[ModelEntry, Depends(get_default_model)]


async def get_channel(
    channel: Annotated[
        str,
        Query(
            description=(
                "Channel to score in a multi-channel recording: an index from 0 (the default, "
                "as DCASE 2020 used for MIMII), or `mean` for the average of all channels."
            ),
            pattern=r"^(mean|[0-9]{1,4})$",
            examples=["0", "mean"],
        ),
    ] = "0",
) -> Channel:
    # A string with a pattern rather than `int | Literal["mean"]`: one clear
    # validation message instead of one per union member.
    return "mean" if channel == "mean" else int(channel)


ChannelDep = Annotated[Channel, Depends(get_channel)]


async def get_machine_id(
    machine_id: Annotated[
        str | None,
        Query(
            description=(
                "The machine the recording is from: its own calibrated threshold decides (the model-wide "
                "one when the ID has none). `06`, `6` and `id_06` are the same ID; one the model does not "
                "know answers 422 `unknown_machine_id` (GET /v1/models/{name} lists `machine_ids`)."
            ),
            pattern=r"^(id_)?[0-9]{1,4}$",
            examples=["06"],
        ),
    ] = None,
) -> str | None:
    return None if machine_id is None else normalize_machine_id(machine_id)


async def get_false_alarm_rate(
    false_alarm_rate: Annotated[
        float | None,
        Query(
            gt=0,
            lt=1,
            description=(
                "Decide at this expected share of normal clips flagged (e.g. 0.01) instead of the calibrated "
                "one: the threshold is read off the calibration's false-alarm curve (of the machine ID, when "
                "given). Outside the curve's range, or for a model without one: 422 "
                "`false_alarm_rate_unavailable`."
            ),
            examples=[0.01],
        ),
    ] = None,
) -> float | None:
    return false_alarm_rate


MachineIdDep = Annotated[str | None, Depends(get_machine_id)]


async def get_machine_label(
    settings: SettingsDep,
    machine_id: MachineIdDep,
    machine: Annotated[
        str | None,
        Query(
            description=(
                "A name for the recording's machine in the metrics' `machine` label, for models without "
                "machine IDs; one of ASD_MACHINES (others answer 422 `unknown_machine`). `machine_id`, "
                "when given, is the label instead."
            ),
            max_length=64,
            examples=["press-3"],
        ),
    ] = None,
) -> str:
    """The `machine` label of this request's metrics: bounded by the model's IDs or ASD_MACHINES."""
    if machine is not None and machine not in settings.machine_names:
        allowed = ", ".join(sorted(settings.machine_names)) or "none (ASD_MACHINES is empty)"
        raise ApiError(
            422, "unknown_machine", f"machine {machine!r} is not in ASD_MACHINES; allowed: {allowed}"
        )
    return machine_id or machine or NO_MACHINE


MachineLabelDep = Annotated[str, Depends(get_machine_label)]
FalseAlarmRateDep = Annotated[float | None, Depends(get_false_alarm_rate)]


async def get_detail(
    detail: Annotated[
        Detail,
        Query(
            description=(
                "`map` adds `map` to the answer: the clip's log-mel (dB) and squared reconstruction error "
                "per mel band and time, block means on a grid of at most 64 x 128, with the worst region "
                "marked (about 100 kB of JSON for a 10 s clip). `none`, the default, leaves it out."
            ),
        ),
    ] = "none",
) -> Detail:
    return detail


DetailDep = Annotated[Detail, Depends(get_detail)]

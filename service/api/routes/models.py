"""What is being served: the detectors, their thresholds and what they were trained on."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Request

from service.api.deps import (
    MetricsDep,
    ModelDep,
    ReadyRegistryDep,
    SettingsDep,
    publish_models,
    require_api_key,
)
from service.api.errors import ApiError, error_responses
from service.api.openapi import DocstringRoute
from service.errors import ReloadInProgressError
from service.patches import PatchLayout
from service.registry import ModelEntry
from service.reload import ReloadSignal
from service.schemas import ModelInfo, ModelList, PatchingInfo, ReloadFailure, ReloadResult, ScoringInfo

router = APIRouter(
    route_class=DocstringRoute, prefix="/v1/models", tags=["models"], dependencies=[Depends(require_api_key)]
)


@router.get("", response_model=ModelList, responses=error_responses(401, 503))
async def list_models(registry: ReadyRegistryDep, settings: SettingsDep) -> ModelList:
    """List every model folder found, ready or broken (with the reason)."""
    entries = sorted(registry.models.values(), key=lambda e: e.name)
    return ModelList(
        default_model=settings.default_model,
        models=[describe(e, default=e.name == settings.default_model) for e in entries],
    )


@router.post("/reload", response_model=ReloadResult, responses=error_responses(401, 409, 503))
async def reload_models(request: Request, registry: ReadyRegistryDep, metrics: MetricsDep) -> ReloadResult:
    """Rescan the models folder: new folders load, changed ones load anew, removed ones unload.

    A new or changed model replaces the old one in one step: requests already running finish on
    the old version, none fails. A folder that does not load is listed in `broken`; if an earlier
    version of it was serving, that version keeps serving (status `stale`, with the reason). With
    several workers, every worker rescans (within half a second). One reload at a time: 409
    `reload_in_progress` while another runs.
    """
    try:
        report = await anyio.to_thread.run_sync(registry.reload)
    except ReloadInProgressError as error:
        raise ApiError(409, "reload_in_progress", str(error)) from None
    publish_models(registry, metrics)
    signal: ReloadSignal = request.app.state.reload_signal
    return ReloadResult(
        added=report.added,
        replaced=report.replaced,
        removed=report.removed,
        unchanged=report.unchanged,
        broken=[
            ReloadFailure(name=name, error=registry.models[name].error, serving=registry.models[name].serving)
            for name in report.broken
        ],
        duration_ms=report.duration_ms,
        other_workers=signal.announce(),
    )


@router.get("/{name}", response_model=ModelInfo, responses=error_responses(401, 404, 503))
async def get_model(entry: ModelDep, settings: SettingsDep) -> ModelInfo:
    """Describe one model: thresholds and how they were set, features, patching, training data.

    The threshold is the model-wide one with each machine ID's own fit in `per_id`; `fingerprint` is
    what the input checks compare uploads with.
    """
    return describe(entry, default=entry.name == settings.default_model)


def describe(entry: ModelEntry, *, default: bool) -> ModelInfo:
    info = ModelInfo(name=entry.name, status=entry.status.value, error=entry.error, default=default)
    bundle = entry.bundle
    if bundle is None:  # threshold.json missing or unreadable: only the error is known
        return info
    params = bundle.features.params()
    # From the bundle, not a loaded detector: a model that failed to load is described too.
    layout = PatchLayout(
        frames=bundle.patching.frames, hop=bundle.patching.hop, arch=bundle.model.arch, params=params
    )
    frames, hop, seconds_per_frame = layout.frames, layout.hop, layout.seconds_per_frame
    return info.model_copy(
        update={
            "machine_type": bundle.machine_type,
            "machine_ids": bundle.machine_ids,
            "arch": bundle.model.arch,
            "precision": bundle.model.precision,
            "threshold": bundle.threshold,
            # The recipe without the packed filter bank: thousands of numbers nobody reads.
            "features": params,
            "packed_mel_filters": bundle.features.mel_filters is not None,
            "patching": PatchingInfo(
                frames=frames,
                hop=hop,
                seconds=round(frames * seconds_per_frame, 6),
                hop_seconds=round(hop * seconds_per_frame, 6),
            ),
            "min_duration_s": round(layout.min_samples / params.sample_rate, 6),
            "training": bundle.training,
            "fingerprint": bundle.fingerprint,
            "model": bundle.model,
            "versions": bundle.versions,
            "scoring": None if bundle.scoring is None else ScoringInfo.of(bundle.scoring),
        }
    )

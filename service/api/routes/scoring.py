"""Scoring uploads: one clip (multipart or raw body), the default model, or a batch."""

from __future__ import annotations

import functools
from typing import Annotated, Any, BinaryIO

import anyio
from fastapi import APIRouter, Depends, File, Request, UploadFile

from service.api.deps import (
    ChannelDep,
    DefaultModelDep,
    DetailDep,
    FalseAlarmRateDep,
    LimiterDep,
    MachineIdDep,
    MachineLabelDep,
    MetricsDep,
    ReadyModelDep,
    SettingsDep,
    require_api_key,
)
from service.api.errors import ApiError, audio_error, error_responses
from service.api.openapi import DocstringRoute
from service.audio import Channel
from service.config import Settings
from service.errors import AudioError, FeatureError, ThresholdChoiceError
from service.inputcheck import CheckLimits
from service.metrics import ServiceMetrics
from service.registry import ModelEntry
from service.schemas import BatchFailed, BatchResult, BatchScored, Detail, ScoreResult
from service.scoring import ChosenThreshold, choose_threshold, score_upload
from service.uploads import MULTIPART, RAW_AUDIO_TYPES, media_type, read_body

router = APIRouter(
    route_class=DocstringRoute, prefix="/v1", tags=["scoring"], dependencies=[Depends(require_api_key)]
)

FileParam = Annotated[
    UploadFile | None,
    File(
        description=(
            "The recording: WAV (PCM 8/16/24/32-bit or float), FLAC, OGG or anything libsndfile reads; "
            "any sample rate, mono or multi-channel. Leave the form out to send the audio itself as the body."
        )
    ),
]
FilesParam = Annotated[list[UploadFile], File(description="The recordings, one multipart part each.")]

_BINARY = {"schema": {"type": "string", "format": "binary"}}
# The generated request body only knows the multipart form; add the raw audio types.
RAW_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "description": "multipart/form-data with the field `file`, or the audio itself as the body.",
        "content": dict.fromkeys(sorted(RAW_AUDIO_TYPES), _BINARY),
    }
}
SCORE_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 503)


@router.post(
    "/models/{name}/score", response_model=ScoreResult, responses=SCORE_ERRORS, openapi_extra=RAW_BODY_DOC
)
async def score_with_model(
    request: Request,
    entry: ReadyModelDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    limiter: LimiterDep,
    channel: ChannelDep,
    machine_id: MachineIdDep,
    machine: MachineLabelDep,
    false_alarm_rate: FalseAlarmRateDep,
    detail: DetailDep,
    file: FileParam = None,
) -> ScoreResult:
    """Score one clip with the named model."""
    chosen = _threshold(request, entry, machine_id, false_alarm_rate)
    return await _score_request(
        request, entry, file, channel, chosen, machine, detail, settings, metrics, limiter
    )


@router.post("/score", response_model=ScoreResult, responses=SCORE_ERRORS, openapi_extra=RAW_BODY_DOC)
async def score_with_default(
    request: Request,
    entry: DefaultModelDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    limiter: LimiterDep,
    channel: ChannelDep,
    machine_id: MachineIdDep,
    machine: MachineLabelDep,
    false_alarm_rate: FalseAlarmRateDep,
    detail: DetailDep,
    file: FileParam = None,
) -> ScoreResult:
    """Score one clip with the default model (ASD_DEFAULT_MODEL)."""
    chosen = _threshold(request, entry, machine_id, false_alarm_rate)
    return await _score_request(
        request, entry, file, channel, chosen, machine, detail, settings, metrics, limiter
    )


@router.post(
    "/models/{name}/score/batch",
    response_model=BatchResult,
    responses=error_responses(400, 401, 404, 413, 422, 503),
)
async def score_batch(
    request: Request,
    entry: ReadyModelDep,
    files: FilesParam,
    settings: SettingsDep,
    metrics: MetricsDep,
    limiter: LimiterDep,
    channel: ChannelDep,
    machine_id: MachineIdDep,
    machine: MachineLabelDep,
    false_alarm_rate: FalseAlarmRateDep,
    detail: DetailDep,
) -> BatchResult:
    """Score several clips (multipart field `files`); a file that fails gets its own error entry.

    `machine_id` and `false_alarm_rate` apply to every file: all are from one machine.
    """
    # The file count is capped while parsing the form (form_limits in create_app).
    request.state.model = entry.name
    chosen = _threshold(request, entry, machine_id, false_alarm_rate)
    results: list[BatchScored | BatchFailed] = []
    total_ms = 0.0
    for upload in files:
        try:
            result = await _score(
                entry,
                _upload_source(upload),
                channel,
                upload.filename,
                chosen,
                machine,
                detail,
                settings,
                metrics,
                limiter,
            )
        except ApiError as error:
            results.append(
                BatchFailed(
                    filename=upload.filename, status=error.status, code=error.code, message=error.message
                )
            )
            continue
        total_ms += result.processing_ms
        results.append(BatchScored(filename=upload.filename, result=result))
    scored = sum(isinstance(r, BatchScored) for r in results)
    return BatchResult(
        model=entry.name,
        n_files=len(results),
        n_scored=scored,
        n_failed=len(results) - scored,
        results=results,
        processing_ms=round(total_ms, 2),
    )


def _threshold(
    request: Request, entry: ModelEntry, machine_id: str | None, false_alarm_rate: float | None
) -> ChosenThreshold:
    """The request's threshold, or 422 before any audio is read."""
    assert entry.detector is not None
    request.state.machine_id = machine_id  # for the access log, also when the ID is refused
    try:
        return choose_threshold(
            entry.detector.bundle, machine_id=machine_id, false_alarm_rate=false_alarm_rate
        )
    except ThresholdChoiceError as error:
        raise ApiError(422, error.code, str(error)) from None


async def _score_request(
    request: Request,
    entry: ModelEntry,
    file: UploadFile | None,
    channel: Channel,
    chosen: ChosenThreshold,
    machine: str,
    detail: Detail,
    settings: Settings,
    metrics: ServiceMetrics,
    limiter: anyio.CapacityLimiter,
) -> ScoreResult:
    request.state.model = entry.name
    kind = media_type(request)
    if kind == MULTIPART:
        if file is None:
            raise ApiError(
                422, "missing_file", "the multipart form must carry the recording in a field named 'file'"
            )
        source, filename = _upload_source(file), file.filename
    elif kind in RAW_AUDIO_TYPES:
        source, filename = await read_body(request, int(settings.max_upload_size)), None
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {kind or '(none)'!r} is not accepted: send multipart/form-data with a 'file' "
            f"field, or the audio as the body with one of {', '.join(sorted(RAW_AUDIO_TYPES))}",
        )
    result = await _score(
        entry, source, channel, filename, chosen, machine, detail, settings, metrics, limiter
    )
    request.state.decision = result.decision
    return result


def _upload_source(upload: UploadFile) -> bytes | bytearray | BinaryIO:
    # The spooled file itself (memory up to 1 MB, then disk): no second copy of the bytes.
    if upload.size == 0:
        return b""
    upload.file.seek(0)
    return upload.file


async def _score(
    entry: ModelEntry,
    source: bytes | bytearray | BinaryIO,
    channel: Channel,
    filename: str | None,
    chosen: ChosenThreshold,
    machine: str,
    detail: Detail,
    settings: Settings,
    metrics: ServiceMetrics,
    limiter: anyio.CapacityLimiter,
) -> ScoreResult:
    """Score in a worker thread (decode, features and inference are CPU work), at most `limiter` at once."""
    assert entry.detector is not None
    work = functools.partial(
        score_upload,
        entry.name,
        entry.detector,
        source,
        channel=channel,
        filename=filename,
        min_seconds=settings.min_duration_s,
        max_seconds=settings.max_duration_s,
        segment_seconds=settings.segment_s,
        threshold=chosen,
        limits=CheckLimits(level_offset_db=settings.level_offset_db),
        detail=detail,
    )
    try:
        result = await anyio.to_thread.run_sync(work, limiter=limiter)
    except AudioError as error:
        metrics.scoring_errors.labels(entry.name, error.code).inc()
        raise audio_error(error) from None
    except FeatureError as error:
        # read_audio already refuses what log-mel cannot take; this is a second net.
        metrics.scoring_errors.labels(entry.name, "invalid_audio").inc()
        raise ApiError(400, "invalid_audio", str(error)) from None
    metrics.scoring_seconds.labels(entry.name).observe(result.processing_ms / 1000)
    metrics.decisions.labels(entry.name, machine, result.decision).inc()
    metrics.ratio.labels(entry.name, machine).observe(result.ratio)
    metrics.input_checks.labels(entry.name, machine, result.input_check.status).inc()
    for finding in result.input_check.findings:
        metrics.input_findings.labels(entry.name, machine, finding.code).inc()
    return result

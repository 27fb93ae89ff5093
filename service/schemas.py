"""Request and response bodies of the HTTP API (they make the OpenAPI schemas too).

The facts about a model reuse `service.bundle`'s classes (the threshold.json
schema) instead of restating them, so the API shows exactly what was exported.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.bundle import (
    OnnxModel,
    Patching,
    Precision,
    Threshold,
    Training,
)
from service.bundle_scoring import (
    EnvelopeModel,
    Fusion,
    Pooling,
    ScorerName,
    ScoresFrom,
    Scoring,
    ScoringEntry,
    SpectrumBands,
    Standardisation,
)
from service.features import FeatureParams
from service.inputcheck import Fingerprint, InputCheck

Decision = Literal["normal", "anomalous"]


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. `undecodable_audio`.")
    message: str = Field(description="What is wrong, for a person.")
    request_id: str | None = Field(None, description="Also in the X-Request-ID response header.")
    details: list[dict[str, Any]] | None = Field(
        None, description="Per-field problems, for validation errors (`loc`, `msg`, `type`)."
    )


class ErrorResponse(BaseModel):
    """The one error shape of every non-2xx answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "undecodable_audio",
                        "message": "cannot decode audio: Format not recognised.",
                        "request_id": "4f1c2a7e9b0d4e57",
                    }
                }
            ]
        }
    )

    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "models_ready": ["slider", "slider-dense"],
                    "models_broken": [],
                    "default_model": "slider",
                    "default_model_ready": True,
                }
            ]
        }
    )

    status: Literal["loading", "ready", "unavailable"] = Field(
        description="`ready` once loading finished and at least one model serves."
    )
    models_ready: list[str]
    models_stale: list[str] = Field(
        default_factory=list,
        description="Serving the copy loaded at start, but their files changed on disk since (/v1/models).",
    )
    models_broken: list[str]
    default_model: str
    default_model_ready: bool = Field(description="Whether the default model serves (ready or stale).")
    log_errors: int = Field(
        0, description="Log lines this worker could not write (e.g. disk full); it keeps serving."
    )


class PatchingInfo(Patching):
    seconds: float = Field(description="Length of one patch in seconds.")
    hop_seconds: float = Field(description="Time between the starts of two patches.")


class EnvelopeInfo(BaseModel):
    n_bands: int = Field(description="Coarse bands; the mean and precision stay in threshold.json.")
    shrinkage: float
    n_clips: int


class ScoringEntryInfo(BaseModel):
    envelope: EnvelopeInfo
    spectrum: EnvelopeInfo | None = Field(
        None, description="The spectrum scorer's Gaussian, with that scorer."
    )
    standardisation: dict[ScorerName, Standardisation]


class ScoringInfo(BaseModel):
    """A bundle's `scoring` section (`service.bundle_scoring.Scoring`) without the envelope models' matrices."""

    pooling: Pooling
    pooling_param: float | None
    scorers: list[ScorerName]
    band_edges: list[int] | None
    spectrum: SpectrumBands | None = Field(None, description="The spectrum scorer's frames and bands.")
    offset: float | None
    fusion: Fusion = Field(description="How the scorers' z-scores combine: their mean, or the larger (max).")
    standardised_from: ScoresFrom | None
    model_wide: ScoringEntryInfo | None
    per_id: dict[str, ScoringEntryInfo] | None

    @classmethod
    def of(cls, scoring: Scoring) -> ScoringInfo:
        def gaussian(model: EnvelopeModel) -> EnvelopeInfo:
            return EnvelopeInfo(n_bands=len(model.mean), shrinkage=model.shrinkage, n_clips=model.n_clips)

        def entry(e: ScoringEntry) -> ScoringEntryInfo:
            return ScoringEntryInfo(
                envelope=gaussian(e.envelope),
                spectrum=None if e.spectrum is None else gaussian(e.spectrum),
                standardisation=e.standardisation,
            )

        fields = scoring.model_dump(exclude={"model_wide", "per_id"})
        per_id = None if scoring.per_id is None else {k: entry(v) for k, v in scoring.per_id.items()}
        wide = None if scoring.model_wide is None else entry(scoring.model_wide)
        return cls(**fields, model_wide=wide, per_id=per_id)


class ModelInfo(BaseModel):
    """What a detector is, how its threshold was set and what it learned from."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "name": "slider",
                    "status": "ready",
                    "error": None,
                    "default": True,
                    "machine_type": "slider",
                    "machine_ids": ["00", "02", "04", "06"],
                    "threshold": {
                        "value": 12.7,
                        "method": "gamma",
                        "quantile": 0.9,
                        "gamma": {"shape": 8.1, "loc": 2.3, "scale": 1.1},
                        "n_calibration_clips": 280,
                        "empirical_false_alarm_rate": 0.096,
                        "false_alarm_interval": [0.068, 0.131],
                        "clips_for_3_points": 1100,
                        # A real export has 121 points, logit-spaced from 1e-5 to 1 - 1e-5.
                        "curve": {"rates": [0.001, 0.01, 0.1, 0.5], "values": [24.6, 18.9, 12.7, 9.6]},
                        "scores_from": "holdout",
                        "folds": None,
                        "per_id": {
                            "00": {
                                "value": 11.4,
                                "method": "gamma",
                                "quantile": 0.9,
                                "gamma": {"shape": 7.6, "loc": 2.1, "scale": 1.0},
                                "n_calibration_clips": 70,
                                "empirical_false_alarm_rate": 0.1,
                                "false_alarm_interval": [0.043, 0.171],
                                "clips_for_3_points": 1050,
                                "curve": {
                                    "rates": [0.001, 0.01, 0.1, 0.5],
                                    "values": [22.8, 17.3, 11.4, 8.7],
                                },
                            },
                        },
                        "calibration_history": [],
                    },
                    "min_duration_s": 1.0,
                }
            ]
        },
    )

    name: str
    status: Literal["ready", "stale", "broken"] = Field(
        description=(
            "`ready` serves; `stale` serves the copy loaded at start but its files on disk changed "
            "or vanished since (a restart would load what is there now); `broken` failed to load."
        )
    )
    error: str | None = Field(
        None, description="Why a broken model could not be loaded, or what changed on disk for a stale one."
    )
    default: bool = Field(description="Whether POST /v1/score uses this model.")
    machine_type: str | None = None
    machine_ids: list[str] | None = None
    arch: str | None = None
    precision: Precision | None = Field(None, description="fp32, or int8 from static quantization.")
    threshold: Threshold | None = None
    features: FeatureParams | None = Field(None, description="The log-mel recipe the model was trained with.")
    packed_mel_filters: bool | None = Field(
        None, description="Whether threshold.json carries the mel filter bank (else it is computed at load)."
    )
    patching: PatchingInfo | None = None
    min_duration_s: float | None = Field(None, description="Shortest clip that gives one patch.")
    training: Training | None = None
    fingerprint: Fingerprint | None = Field(
        None,
        description=(
            "What the training audio looked like, which the input checks compare uploads with; "
            "null for a model exported without one (its answers say `input_check.status: unchecked`)."
        ),
    )
    model: OnnxModel | None = Field(None, description="The ONNX file, its sha256 and graph names.")
    versions: dict[str, str] | None = None
    scoring: ScoringInfo | None = Field(
        None, description="How the clip score is made (pooling, fused scorers); null: the mean patch error."
    )


class ModelList(BaseModel):
    default_model: str
    models: list[ModelInfo]


class ReloadFailure(BaseModel):
    name: str
    error: str | None = Field(description="Why the folder did not load.")
    serving: bool = Field(description="Whether an earlier version of this model keeps serving.")


class ReloadResult(BaseModel):
    """What a rescan of the models folder changed in the worker that answered."""

    added: list[str] = Field(description="New folders, now serving.")
    replaced: list[str] = Field(description="Changed folders, the new version now serving.")
    removed: list[str] = Field(description="Folders gone from the models folder, no longer served.")
    unchanged: list[str]
    broken: list[ReloadFailure] = Field(description="Folders that did not load.")
    duration_ms: float
    other_workers: bool = Field(
        description="Whether other worker processes were told to rescan too (ASD_WORKERS > 1)."
    )


class ClipInfo(BaseModel):
    filename: str | None = None
    duration_s: float = Field(description="Length of the uploaded audio.")
    sample_rate: int = Field(description="Rate the model scored at (after resampling).")
    source_sample_rate: int = Field(description="Rate of the upload.")
    channels: int = Field(description="Channels in the upload.")
    channel: int | Literal["mean"] = Field(description="Channel that was scored.")
    format: str
    subtype: str


class Segment(BaseModel):
    index: int
    start_s: float
    end_s: float
    score: float = Field(
        description="Mean reconstruction error of the patches centred in this segment "
        "(a fused model: their scores on the clip score's scale)."
    )
    ratio: float = Field(description="score / threshold; above 1 this part alone looks anomalous.")
    n_patches: int
    worst: bool = Field(description="The segment with the highest score.")


Detail = Literal["none", "map"]


class MapRegion(BaseModel):
    """A rectangle of the error map: rows `row_start` to `row_end`, columns `column_start` to `column_end`.

    Ends are exclusive; about a second wide and an eighth of the mel rows high.
    """

    row_start: int
    row_end: int
    column_start: int
    column_end: int
    start_s: float
    end_s: float
    low_hz: float = Field(description="Centre frequency of the region's lowest row.")
    high_hz: float = Field(description="Centre frequency of the region's highest row.")
    error: float = Field(description="Mean squared error over the region.")


# pydantic writes bytes as base64url (its "base64" mode); FastAPI's schema generator says base64.
_BASE64URL: dict[str, Any] = {"format": "base64url", "contentEncoding": "base64url"}


class ErrorMap(BaseModel):
    """The clip's log-mel and reconstruction error per mel band and time, as block means on a small grid.

    Both grids have `n_rows` rows (mel bands, low to high frequency) of `n_columns` cells (time), at most
    64 x 128, covering the frames the patches cover. Each is sent as bytes: its cells as little-endian
    float32, row-major (row 0 the lowest band), n_rows x n_columns x 4 bytes in base64url (RFC 4648
    section 5, padded). In Python: `numpy.frombuffer(base64.urlsafe_b64decode(text), "<f4")
    .reshape(n_rows, n_columns)`; in a browser: `atob` after replacing `-` by `+` and `_` by `/`.
    """

    # bytes fields are written as base64url (pydantic's "base64") and read back from it.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    n_rows: int
    n_columns: int
    row_hz: list[float] = Field(description="Centre frequency of each row in Hz (mean of its mel bands').")
    column_edges_s: list[float] = Field(
        description="Start of each column in seconds, and the end of the last: n_columns + 1 values."
    )
    log_mel_db: bytes = Field(
        description="Log-mel level in dB, before standardisation: a grid of float32 (see above).",
        json_schema_extra=_BASE64URL,
    )
    errors: bytes = Field(
        description=(
            "Squared reconstruction error of the standardised log-mel, each frame's mean over the "
            "patches that cover it (a patch's error is their mean over the patch): a grid of float32 "
            "(see above)."
        ),
        json_schema_extra=_BASE64URL,
    )
    worst: MapRegion = Field(description="The region with the highest mean error.")


class ScoreResult(BaseModel):
    """One clip scored by one model."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "slider",
                    "machine_id": "02",
                    "score": 14.2,
                    "threshold": 12.7,
                    "threshold_scope": "machine_id",
                    "false_alarm_rate": 0.1,
                    "ratio": 1.118,
                    "decision": "anomalous",
                    "input_check": {
                        "status": "warning",
                        "findings": [
                            {
                                "code": "level_offset",
                                "message": "The clip is 9.2 dB louder than the training recordings of "
                                "machine ID 02: a gain or microphone change, or the fault itself.",
                                "value": 9.2,
                            }
                        ],
                    },
                    "clip": {
                        "filename": "slider_abnormal.wav",
                        "duration_s": 10.0,
                        "sample_rate": 16000,
                        "source_sample_rate": 16000,
                        "channels": 8,
                        "channel": 0,
                        "format": "WAV",
                        "subtype": "PCM_16",
                    },
                    "segments": [
                        {
                            "index": 0,
                            "start_s": 0.0,
                            "end_s": 1.0,
                            "score": 11.9,
                            "ratio": 0.937,
                            "n_patches": 4,
                            "worst": False,
                        },
                        {
                            "index": 1,
                            "start_s": 1.0,
                            "end_s": 2.0,
                            "score": 19.5,
                            "ratio": 1.535,
                            "n_patches": 4,
                            "worst": True,
                        },
                    ],
                    "worst_segment": 1,
                    "n_patches": 8,
                    "processing_ms": 21.4,
                }
            ]
        },
    )

    model: str
    machine_id: str | None = Field(
        None, description="The machine ID asked for (`machine_id`), as two digits; null when none was given."
    )
    score: float = Field(
        description=(
            "The clip's anomaly score: the reconstruction error pooled over its patches or, for a "
            "model that fuses scorers (`scoring` in GET /v1/models/{name}; the default CAE does), "
            "5 + the mean of each scorer's score standardised on held-out normal clips of the ID, "
            "so that 5 is typical of normal sound."
        )
    )
    components: dict[str, float] | None = Field(
        None,
        description=(
            "Each fused scorer's own score before standardisation: `cae`, the pooled reconstruction "
            "error, and `envelope`, the distance of the clip's band levels from normal ones. null for "
            "a model scored by its reconstruction error alone."
        ),
    )
    threshold: float = Field(description="The threshold the decision used (see `threshold_scope`).")
    threshold_scope: Literal["machine_id", "model"] = Field(
        description=(
            "`machine_id`: the machine ID's own calibrated threshold; `model`: the model-wide one "
            "(no ID given, or the ID has no fit of its own)."
        )
    )
    false_alarm_rate: float = Field(
        description=(
            "Share of normal clips expected above the threshold: the `false_alarm_rate` asked for, "
            "else the calibration's target (1 - quantile)."
        )
    )
    ratio: float = Field(description="score / threshold.")
    decision: Decision = Field(description="`anomalous` when score > threshold.")
    input_check: InputCheck = Field(
        description=(
            "Whether the clip looks like the training audio (level, clipping, silence, DC offset, "
            "bandwidth). Findings never change the decision: they say when it may be the input, not "
            "the machine. `unchecked` for a model exported without an input fingerprint."
        )
    )
    clip: ClipInfo
    segments: list[Segment] = Field(
        description="The patches' scores, on the scale of `score`, grouped into segments of about 1 s."
    )
    worst_segment: int = Field(description="Index of the segment with the highest score.")
    n_patches: int
    processing_ms: float = Field(description="Decode, features and inference time.")
    map: ErrorMap | None = Field(
        None, description="The log-mel and error map (`detail=map`); null unless asked for."
    )


class BatchScored(BaseModel):
    filename: str | None
    status: Literal[200] = 200
    result: ScoreResult


class BatchFailed(BaseModel):
    filename: str | None
    status: int = Field(description="The HTTP status this file alone would have had.")
    code: str
    message: str


class BatchResult(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    n_files: int
    n_scored: int
    n_failed: int
    results: list[BatchScored | BatchFailed] = Field(description="One entry per file, in upload order.")
    processing_ms: float

"""The exported detector folder: `model.onnx` beside `threshold.json`.

`threshold.json` is the single place for every fact the service needs to
reproduce what training did: feature parameters, patching, per-mel-bin
normalisation, the threshold and how it was set, and where the model came
from. Training writes it through `Bundle`; the service reads it through
`Bundle`; neither side keeps its own copy of these facts.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.bundle_scoring import (
    ScoresFrom,
    Scoring,
)
from service.errors import UnknownMachineIdError
from service.features import FeatureParams, mel_filterbank, pack_filters, unpack_filters
from service.inputcheck import Fingerprint


def normalize_machine_id(raw: str) -> str:
    """ "06", "6" and "id_06" are one machine: IDs are two-digit strings, as training writes them."""
    text = raw.strip().removeprefix("id_")
    if not text.isdecimal():
        raise UnknownMachineIdError(f"machine IDs are numbers such as 06, 6 or id_06, got {raw!r}")
    return f"{int(text):02d}"


# 2 added per-ID thresholds, false-alarm curves, calibration history and the
# input fingerprint; every addition is optional, so format 1 folders still load.
# The later `scoring` section is optional too: without it a folder scores as before; a folder
# without `model.precision` holds an fp32 graph, and a `scoring` section without `fusion` takes the mean.
FORMAT_VERSION: Final = 2
THRESHOLD_FILE = "threshold.json"
MODEL_FILE = "model.onnx"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MelFilters(_Strict):
    """The mel filter bank, packed by `service.features.pack_filters`."""

    first_bin: list[int]
    weights: list[list[float]]


class Features(_Strict):
    """Log-mel recipe: the fields of `service.features.FeatureParams` and its filter bank."""

    sample_rate: int = Field(16000, gt=0)
    n_fft: int = Field(1024, gt=0)
    hop_length: int = Field(512, gt=0)
    n_mels: int = Field(128, gt=0)
    power: float = 2.0
    fmin: float = 0.0
    fmax: float | None = None
    amin: float = Field(1e-10, gt=0)
    mel_filters: MelFilters | None = Field(
        None, description="packed filter bank; without it the service computes one with librosa"
    )

    @model_validator(mode="after")
    def _filters_match(self) -> Features:
        if self.mel_filters is not None:
            self.mel_basis()  # raises on a filter bank of the wrong size
            if len(self.mel_filters.first_bin) != self.n_mels:
                raise ValueError(
                    f"mel_filters has {len(self.mel_filters.first_bin)} rows, n_mels is {self.n_mels}"
                )
        return self

    def params(self) -> FeatureParams:
        return FeatureParams(**self.model_dump(exclude={"mel_filters"}))

    def mel_basis(self) -> np.ndarray | None:
        """The packed filter bank as an array, or None when the bundle has none."""
        if self.mel_filters is None:
            return None
        return unpack_filters(self.mel_filters.first_bin, self.mel_filters.weights, n_fft=self.n_fft)

    @classmethod
    def from_params(cls, params: FeatureParams, *, with_filters: bool = True) -> Features:
        """The recipe for `params`, with librosa's filter bank packed in (training side)."""
        filters = None
        if with_filters:
            first_bin, weights = pack_filters(mel_filterbank(params))
            filters = MelFilters(first_bin=first_bin, weights=weights)
        return cls(**params.to_dict(), mel_filters=filters)


class Patching(_Strict):
    """How a spectrogram is cut into model inputs: `frames` wide, every `hop` frames."""

    frames: int = Field(gt=0)
    hop: int = Field(gt=0)


class Normalization(_Strict):
    """Per-mel-bin standardisation, `(x - mean) / std`, fitted on the training clips."""

    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError("normalization mean and std differ in length")
        if any(s <= 0 for s in self.std):
            raise ValueError("normalization std must be positive")
        return self


Precision = Literal["fp32", "int8"]


class OnnxModel(_Strict):
    file: str = MODEL_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    arch: Literal["cae", "dense"]
    input_name: str
    output_name: str
    opset: int = Field(ge=17)
    precision: Precision = Field(
        "fp32",
        description=(
            "The graph's arithmetic: fp32, or int8 weights and activations from static quantization "
            "(`asd-train quantize`, `asd-train fit --precision int8`), its thresholds fitted to its own scores."
        ),
    )


class GammaFit(_Strict):
    shape: float = Field(gt=0)
    loc: float
    scale: float = Field(gt=0)


class FalseAlarmCurve(_Strict):
    """The gamma fit's threshold for each false-alarm rate on a fixed grid.

    The service has no scipy, so the quantile function travels as numbers:
    `values[i]` is the threshold whose expected false-alarm rate is
    `rates[i]`. Rates are logit-spaced and increasing, values decreasing;
    `threshold_for` interpolates linearly in logit(rate), which is exact to
    about 1e-4 of the value on a grid of this density.
    """

    rates: list[float] = Field(min_length=2)
    values: list[float] = Field(min_length=2)

    @model_validator(mode="after")
    def _monotone(self) -> FalseAlarmCurve:
        rates, values = np.asarray(self.rates), np.asarray(self.values)
        if rates.shape != values.shape:
            raise ValueError("false-alarm curve: rates and values differ in length")
        if not (np.all((rates > 0) & (rates < 1)) and np.all(np.diff(rates) > 0)):
            raise ValueError("false-alarm curve: rates must increase strictly inside (0, 1)")
        if not (np.isfinite(values).all() and np.all(np.diff(values) <= 0)):
            raise ValueError("false-alarm curve: values must be finite and must not increase with the rate")
        return self

    @property
    def lowest(self) -> float:
        return self.rates[0]

    @property
    def highest(self) -> float:
        return self.rates[-1]

    def threshold_for(self, rate: float) -> float:
        """The threshold for a false-alarm rate in [lowest, highest]; ValueError outside."""
        if not self.lowest <= rate <= self.highest:
            raise ValueError(
                f"false-alarm rate {rate:g} is outside the calibrated range "
                f"[{self.lowest:g}, {self.highest:g}]"
            )
        logit = np.log(np.asarray(self.rates)) - np.log1p(-np.asarray(self.rates))
        x = np.log(rate) - np.log1p(-rate)
        return float(np.interp(x, logit, np.asarray(self.values)))


class ThresholdFit(_Strict):
    """One calibrated threshold: a gamma fit to normal clips' scores and its q-quantile."""

    value: float
    method: Literal["gamma"] = "gamma"
    quantile: float = Field(gt=0, lt=1, description="q of the gamma fit; 1 - target false-alarm rate")
    gamma: GammaFit
    n_calibration_clips: int = Field(gt=0)
    empirical_false_alarm_rate: float = Field(ge=0, le=1)
    false_alarm_interval: tuple[float, float] | None = Field(
        None,
        description=(
            "90 % bootstrap interval of the false-alarm rate this threshold will have on new normal "
            "clips: how precise the calibration is with this many clips."
        ),
    )
    clips_for_3_points: int | None = Field(
        None, description="About how many calibration clips would narrow that interval to +/- 3 points."
    )
    curve: FalseAlarmCurve | None = Field(
        None, description="The fit's threshold for other false-alarm rates (the `false_alarm_rate` option)."
    )

    @property
    def target_false_alarm_rate(self) -> float:
        return 1.0 - self.quantile

    def threshold_for(self, rate: float | None) -> float:
        """`value`, or the fit's threshold for another false-alarm rate (ValueError if it has no curve)."""
        if rate is None:
            return self.value
        if self.curve is None:
            raise ValueError(
                "this threshold was exported without a false-alarm curve; recalibrate the model "
                "(asd-train calibrate) to choose another false-alarm rate"
            )
        return self.curve.threshold_for(rate)


class CalibrationEvent(_Strict):
    """One on-site recalibration (`asd-train calibrate`): what changed and from what."""

    at: datetime
    source: str = Field(description="Folder of the normal recordings the threshold was refitted on.")
    n_clips: int
    clips_per_id: dict[str, int]
    false_alarm_rate: float
    machine_id: str | None = Field(None, description="The one ID recalibrated, or None for all found.")
    old_value: float
    new_value: float
    per_id: dict[str, tuple[float | None, float]] | None = Field(
        None, description="Per machine ID: (old value or None when the ID had none, new value)."
    )
    command: str | None = None


class Threshold(ThresholdFit):
    """The model-wide threshold (the fallback), each machine ID's own, and how they were set."""

    scores_from: ScoresFrom | None = Field(
        None,
        description=(
            "Where the calibration scores came from: `holdout` (clips the model never trained on), "
            "`cross_fit` (out-of-fold scores: each fold's model scored the clips it did not see) or "
            "`site` (fresh normal recordings through `asd-train calibrate`)."
        ),
    )
    folds: int | None = Field(None, description="Folds of the cross-fit, when `scores_from` is `cross_fit`.")
    per_id: dict[str, ThresholdFit] | None = Field(
        None, description="Each machine ID's own fit; IDs without one use the model-wide threshold."
    )
    calibration_history: list[CalibrationEvent] = Field(default_factory=list)

    def for_id(self, machine_id: str | None) -> ThresholdFit:
        """The machine ID's own fit when it has one, else the model-wide one."""
        if machine_id is not None and self.per_id and machine_id in self.per_id:
            return self.per_id[machine_id]
        return self


class Training(_Strict):
    """What the model learned from: enough to tell a user what it knows."""

    trained_at: datetime
    data_root: str
    n_clips: int
    n_validation_clips: int
    hours: float
    clips_per_id: dict[str, int]
    skipped_files: int
    epochs_run: int
    seed: int
    final_loss: float | None = None
    final_val_loss: float | None = None
    command: str | None = None
    # Written by training.train since the first release; optional so older bundles still load.
    arch_options: dict[str, Any] | None = None
    validation_clips_per_id: dict[str, int] | None = None
    validation_files: list[str] | None = None
    skipped_names: list[str] | None = None
    best_epoch: int | None = None
    loss_history: list[float] | None = None
    val_loss_history: list[float] | None = None
    seconds: dict[str, float] | None = None
    # A cross-fit's fold models: the epoch of each one's best held-out loss, and that loss.
    fold_best_epochs: list[int] | None = None
    fold_val_losses: list[float] | None = None


def upgrade(document: dict[str, Any]) -> dict[str, Any]:
    """A threshold.json document (parsed JSON) in the current format; the argument is not changed.

    Format 1 -> 2 is a relabelling: everything format 2 added is optional and stays absent (no
    per-ID fits, curve or fingerprint are invented for an old folder). A later format adds its
    step here, so every reader sees one format.
    """
    version = document.get("format_version", 1)
    if version == FORMAT_VERSION:
        return document
    if version != 1:
        raise ValueError(
            f"threshold.json has format_version {version}; this code reads 1 to {FORMAT_VERSION}"
        )
    return {**document, "format_version": FORMAT_VERSION}


class Bundle(_Strict):
    # Files on disk may say 1 or 2 (the published schema accepts both); `_upgrade` makes every
    # Bundle in memory format 2, so it writes back as format 2.
    format_version: Literal[1, 2] = FORMAT_VERSION
    name: str
    machine_type: str
    machine_ids: list[str]
    features: Features
    patching: Patching
    normalization: Normalization
    model: OnnxModel
    threshold: Threshold
    training: Training
    versions: dict[str, str]
    fingerprint: Fingerprint | None = Field(
        None, description="What the training audio looked like, for the input checks (service.inputcheck)."
    )
    scoring: Scoring | None = Field(
        None, description="Pooling and scorers of the clip score; absent: the CAE's mean patch error."
    )

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("format_version", 1), int):
            return upgrade(data)
        return data

    @model_validator(mode="after")
    def _normalization_matches_mels(self) -> Bundle:
        if len(self.normalization.mean) != self.features.n_mels:
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} bins but features have "
                f"{self.features.n_mels} mels"
            )
        edges = self.scoring.band_edges if self.scoring is not None else None
        if edges is not None and edges[-1] != self.features.n_mels:
            raise ValueError(
                f"scoring band_edges end at {edges[-1]}, features have {self.features.n_mels} mels"
            )
        unknown = sorted(set(self.scoring.per_id or {}) - set(self.machine_ids)) if self.scoring else []
        if unknown:
            raise ValueError(f"scoring has entries for machine IDs {unknown} the model does not know")
        return self

    @classmethod
    def read(cls, folder: Path) -> Bundle:
        return cls.model_validate_json((Path(folder) / THRESHOLD_FILE).read_text(encoding="utf-8"))

    def write(self, folder: Path) -> Path:
        path = Path(folder) / THRESHOLD_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

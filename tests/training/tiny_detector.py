"""Tiny exported detectors and DCASE-layout clips for the evaluation and explore tests.

The detector is an ONNX graph that multiplies its input by a constant, so the
tests do not depend on training: with normalization mean -100 dB and std 10,
the standardised log-mel is >= 0 and grows with loudness, and the error
``(1 - factor)² · mean(x²)`` is larger for a louder clip. "Anomalous" test
clips add a loud tone, so they score higher than the normal ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import soundfile as sf
from onnx import TensorProto, helper

from service.bundle import (
    FORMAT_VERSION,
    Bundle,
    FalseAlarmCurve,
    Features,
    GammaFit,
    Normalization,
    OnnxModel,
    Patching,
    Threshold,
    ThresholdFit,
    Training,
    sha256_of,
)
from service.bundle_scoring import EnvelopeModel, Scoring, ScoringEntry, Standardisation
from service.features import FeatureParams
from service.inputcheck import Fingerprint
from service.scorers import band_edges, coarse_bands, fit_gaussian

SAMPLE_RATE = 16000
FRAMES = 32
HOP = 16


def _scale_graph(path: Path, *, factor: float, input_shape: list[int | str]) -> None:
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [factor])
    node = helper.make_node("Mul", ["input", "scale"], ["output"])
    graph = helper.make_graph(
        [node],
        "scale",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, input_shape)],
        initializer=[scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime >= 1.14
    onnx.checker.check_model(model)
    onnx.save(model, path)


def make_detector(
    folder: Path,
    *,
    arch: str = "cae",
    factor: float = 0.5,
    threshold: float = 100.0,
    machine_ids: tuple[str, ...] = ("00", "02"),
    machine_type: str = "slider",
    per_id: dict[str, float | ThresholdFit] | None = None,
    curve: FalseAlarmCurve | None = None,
    fingerprint: Fingerprint | None = None,
    format_version: int = FORMAT_VERSION,
    scoring: Scoring | None = None,
) -> Path:
    """Write model.onnx + threshold.json of a constant-factor "autoencoder" into `folder`.

    `per_id` gives machine IDs their own thresholds (a number becomes a fit without a curve),
    `curve` is the model-wide threshold's false-alarm curve, `scoring` the bundle's scoring section.
    """
    folder.mkdir(parents=True, exist_ok=True)
    params = FeatureParams()
    n_mels = params.n_mels
    shape: list[int | str] = ["N", n_mels, FRAMES, 1] if arch == "cae" else ["N", FRAMES * n_mels]
    model_path = folder / "model.onnx"
    _scale_graph(model_path, factor=factor, input_shape=shape)
    bundle = Bundle(
        name=folder.name,
        machine_type=machine_type,
        machine_ids=list(machine_ids),
        features=Features.from_params(params),
        patching=Patching(frames=FRAMES, hop=HOP),
        normalization=Normalization(mean=[-100.0] * n_mels, std=[10.0] * n_mels),
        model=OnnxModel(
            sha256=sha256_of(model_path), arch=arch, input_name="input", output_name="output", opset=17
        ),
        threshold=Threshold(
            value=threshold,
            quantile=0.9,
            gamma=GammaFit(shape=2.0, loc=0.0, scale=threshold / 4),
            n_calibration_clips=10,
            empirical_false_alarm_rate=0.1,
            curve=curve,
            per_id=None if per_id is None else {mid: _fit(value) for mid, value in per_id.items()},
        ),
        training=Training(
            trained_at=datetime(2020, 3, 1, tzinfo=UTC),
            data_root="synthetic",
            n_clips=10,
            n_validation_clips=2,
            hours=0.03,
            clips_per_id=dict.fromkeys(machine_ids, 5),
            skipped_files=0,
            epochs_run=1,
            seed=0,
        ),
        versions={},
        fingerprint=fingerprint,
        scoring=scoring,
    )
    path = bundle.write(folder)
    if format_version != FORMAT_VERSION:
        # A Bundle in memory is always the current format; an older folder is written as it was.
        document = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps({**document, "format_version": format_version}, indent=2) + "\n")
    return folder


def _fit(value: float | ThresholdFit) -> ThresholdFit:
    if isinstance(value, ThresholdFit):
        return value
    return ThresholdFit(
        value=value,
        quantile=0.9,
        gamma=GammaFit(shape=2.0, loc=0.0, scale=value / 4),
        n_calibration_clips=5,
        empirical_false_alarm_rate=0.1,
    )


def fused_entry(
    levels: np.ndarray, *, cae: tuple[float, float], envelope: tuple[float, float]
) -> ScoringEntry:
    """A cae+envelope entry: the Gaussian of `levels` (n_clips, n_mels) in coarse bands, and each
    scorer's standardisation as (mean, std)."""
    gaussian = fit_gaussian(coarse_bands(levels, band_edges(n_mels=levels.shape[1])))
    return ScoringEntry(
        envelope=EnvelopeModel(
            mean=gaussian.mean.tolist(),
            precision=gaussian.precision.tolist(),
            shrinkage=gaussian.shrinkage,
            n_clips=gaussian.n_clips,
        ),
        standardisation={
            "cae": Standardisation(mean=cae[0], std=cae[1], n_clips=20),
            "envelope": Standardisation(mean=envelope[0], std=envelope[1], n_clips=20),
        },
    )


def two_id_fused_scoring(score: float, band_db: np.ndarray) -> Scoring:
    """cae+envelope around a probe clip's score and bands; ID 02 has an entry of its own, 10 dB
    louder, so its clips score otherwise with their ID than without."""
    edges = band_edges(n_mels=band_db.size)
    levels = band_db + np.random.default_rng(0).normal(0.0, 1.0, size=(40, band_db.size))

    def entry(shift_db: float, cae_std: float) -> ScoringEntry:
        return fused_entry(levels + shift_db, cae=(score, cae_std * score), envelope=(6.0, 1.0))

    return Scoring(
        pooling="topk",
        pooling_param=0.25,
        scorers=["cae", "envelope"],
        band_edges=edges,
        offset=5.0,
        standardised_from="holdout",
        model_wide=entry(0.0, 0.1),
        per_id={"02": entry(10.0, 0.2)},
    )


def with_threshold(folder: Path, value: float) -> None:
    """Rewrite a detector folder's threshold value (the graph is unchanged)."""
    bundle = Bundle.read(folder)
    threshold = bundle.threshold.model_copy(update={"value": value})
    bundle.model_copy(update={"threshold": threshold}).write(folder)


def clip(*, seed: int, anomalous: bool, seconds: float = 2.0, tone_gain: float = 0.3) -> np.ndarray:
    """Quiet noise; an anomalous clip adds a loud 1 kHz tone. Shape (n,), float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    y = 0.02 * rng.standard_normal(n)
    if anomalous:
        t = np.arange(n) / SAMPLE_RATE
        y += tone_gain * np.sin(2 * np.pi * (1000 + 40 * seed) * t)
    return y.astype(np.float32)


def write_test_set(
    root: Path,
    *,
    machine_type: str = "slider",
    ids: tuple[str, ...] = ("00", "02"),
    n_normal: int = 4,
    n_anomaly: int = 3,
) -> Path:
    """DCASE layout: ROOT/<machine_type>/test/{normal,anomaly}_id_XX_NNNNNNNN.wav; returns ROOT."""
    test_dir = root / machine_type / "test"
    test_dir.mkdir(parents=True, exist_ok=True)
    for k, mid in enumerate(ids):
        for i in range(n_normal):
            y = clip(seed=100 * k + i, anomalous=False)
            sf.write(test_dir / f"normal_id_{mid}_{i:08d}.wav", y, SAMPLE_RATE)
        for i in range(n_anomaly):
            # The weakest tone of each ID is barely louder than the noise, so
            # not every decision is right and the confusion matrix is mixed.
            gain = 0.3 if i else 0.004
            sf.write(
                test_dir / f"anomaly_id_{mid}_{i:08d}.wav",
                clip(seed=100 * k + 50 + i, anomalous=True, tone_gain=gain),
                SAMPLE_RATE,
            )
    return root

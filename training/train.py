"""`fit`: read the training clips, train an autoencoder, calibrate and export it.

The steps, each timed for the fit summary:

1. features: list the training WAVs (`training.dataset`), decode and
   featurise them; unreadable or too-short files are skipped and reported;
2. split whole clips per machine ID into training and validation, fit the
   per-mel-bin standardisation on the training clips only, cut patches;
3. training: Adam on the MSE, early stopping on the validation loss with
   the best weights restored, seeded (`keras.utils.set_random_seed`) with
   TensorFlow's deterministic ops;
4. export (`training.export`): ONNX, check against Keras, gamma threshold
   from the validation clips scored through the deployed `Detector`,
   `threshold.json`.

`--pooling` and `--scorer cae+envelope` change how the clip score is made
(`service.scorers`); the envelope Gaussians are fitted on the clips the
scoring model trained on (each fold's own in a cross-fit), so the held-out
scores that standardise and calibrate them are honest.

TensorFlow is imported only when training starts, so a wrong data folder
is reported at once rather than after TensorFlow's import.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
from tqdm import tqdm

from service.audio import Channel
from service.bundle import Pooling, Threshold, ThresholdFit, Training
from service.features import FeatureParams
from service.inputcheck import build_fingerprint
from service.scorers import band_edges, check_pooling
from training.dataset import (
    Arch,
    DatasetError,
    FeatureClip,
    LoadResult,
    Normalizer,
    fit_normalizer,
    list_clips,
    load_features,
    patch_array,
    split_validation,
)
from training.export import (
    MAX_CHECK_PATCHES,
    MIN_ID_CLIPS,
    Calibration,
    Candidate,
    Envelopes,
    RawScores,
    export_detector,
    fit_envelopes,
    raw_scores_with_model,
    score_with_model,
)
from training.model import CaeConfig
from training.threshold import MIN_CALIBRATION_CLIPS, quantile_for

# Per-architecture defaults (measurements behind them are in models/README.md).
# cae: 8-frame patches (0.26 s) without overlap, 8 epochs of batch 64: the
# best of an ablation over patch width, code size and decoder order on the
# reference data (models/README.md). Short patches keep brief events (clicks,
# impacts) from being averaged away. 8 epochs: a 10-epoch run's best
# validation loss was at epoch 8, and 8 keep `fit` on the 3.3 h reference set
# inside 10 minutes on 2 cores (models/README.md, "Training speed").
# dense: the DCASE 2020 baseline's 5 frames, hop 1, batch 512 (its 100 epochs
# are cut to 20: the validation loss flattens long before on this data).
ARCH_DEFAULTS: dict[str, dict[str, int]] = {
    "cae": {"frames": 8, "patch_hop": 8, "batch_size": 64, "epochs": 8},
    "dense": {"frames": 5, "patch_hop": 1, "batch_size": 512, "epochs": 20},
}


CalibrationMode = Literal["auto", "cross-fit", "holdout"]
ScorerChoice = Literal["cae", "cae+envelope"]
# `auto` cross-fits while the smallest machine ID has fewer clips than this: a
# 10 % holdout would leave each ID too few calibration clips for a threshold it
# can trust (models/README.md, "Calibration"), and k + 1 fits of a few hundred
# clips stay within minutes. From here on, one fit with a holdout.
CROSS_FIT_BELOW = 250
DEFAULT_FOLDS = 5
MIN_FIT_CLIPS = 10


class TrainingError(RuntimeError):
    """Training cannot produce a usable model (its loss became NaN or infinite)."""


@dataclass(frozen=True)
class FitOptions:
    """Everything `fit` can be told; None means the architecture's default (`ARCH_DEFAULTS`)."""

    machine_type: str = "slider"
    ids: tuple[str, ...] | None = None
    arch: Arch = "cae"
    frames: int | None = None
    patch_hop: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    patience: int = 5
    false_alarm_rate: float | None = None
    channel: Channel = 0
    learning_rate: float = 1e-3
    cae: CaeConfig = field(default_factory=CaeConfig)
    features: FeatureParams = field(default_factory=FeatureParams)
    calibration: CalibrationMode = "auto"
    folds: int = DEFAULT_FOLDS
    # How patch errors become the clip score, and whether the envelope scorer joins the CAE.
    pooling: Pooling = "mean"
    pooling_param: float | None = None  # None: the pooling's default (service.scorers)
    scorer: ScorerChoice = "cae"
    workers: int = 2
    progress: bool = True

    @property
    def fused(self) -> bool:
        return self.scorer == "cae+envelope"

    def resolved(self) -> FitOptions:
        """A copy with every None default filled in for `arch`, validated."""
        if self.arch not in ARCH_DEFAULTS:
            raise DatasetError(f"unknown architecture {self.arch!r}; choose cae or dense")
        defaults = ARCH_DEFAULTS[self.arch]
        if self.scorer not in ("cae", "cae+envelope"):
            raise DatasetError(f"unknown scorer {self.scorer!r}; choose cae or cae+envelope")
        try:
            pooling_param = check_pooling(self.pooling, self.pooling_param)
        except ValueError as error:
            raise DatasetError(f"--pooling {self.pooling}: {error}") from None
        done = replace(
            self,
            frames=defaults["frames"] if self.frames is None else self.frames,
            patch_hop=defaults["patch_hop"] if self.patch_hop is None else self.patch_hop,
            epochs=defaults["epochs"] if self.epochs is None else self.epochs,
            batch_size=defaults["batch_size"] if self.batch_size is None else self.batch_size,
            pooling_param=pooling_param,
        )
        for name in ("frames", "patch_hop", "epochs", "batch_size"):
            if getattr(done, name) <= 0:
                raise DatasetError(f"{name.replace('_', '-')} must be positive, got {getattr(done, name)}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise DatasetError(f"learning-rate must be a positive number, got {self.learning_rate}")
        if self.patience < 0:
            raise DatasetError(f"patience must be >= 0, got {self.patience}")
        if self.calibration not in ("auto", "cross-fit", "holdout"):
            raise DatasetError(f"unknown calibration {self.calibration!r}; choose auto, cross-fit or holdout")
        if self.folds < 2:
            raise DatasetError(f"folds must be at least 2, got {self.folds}")
        quantile_for(self.false_alarm_rate)  # validates the rate now, not after training
        if self.arch == "cae":
            self.cae.check(n_mels=self.features.n_mels, frames=done.frames)
        return done


@dataclass(frozen=True)
class FitSummary:
    out: Path
    arch: str
    n_files: int
    n_train: int
    n_validation: int
    clips_per_id: dict[str, int]
    hours: float
    skipped: list[tuple[str, str]]  # (file name, reason)
    ignored_anomalies: int
    epochs_run: int
    best_epoch: int
    loss: float
    val_loss: float | None
    seconds: dict[str, float]  # features, training, export, total
    threshold: Threshold
    calibration_scores: np.ndarray  # (n_calibration,)
    calibration_ids: list[str]  # machine ID of each calibration score
    max_onnx_difference: float
    keras_model: object = field(default=None, repr=False, compare=False)  # the trained keras.Model
    # cae+envelope: the calibration clips scored without a machine ID (the model-wide threshold's scores)
    # and every scorer's raw held-out scores (training.export.RawScores) the standardisation came from.
    calibration_scores_wide: np.ndarray | None = None
    raw_scores: RawScores | None = None
    scoring: str = "cae, mean pooling"

    @property
    def quantile(self) -> float:
        return self.threshold.quantile

    @property
    def empirical_far(self) -> float:
        return self.threshold.empirical_false_alarm_rate

    @property
    def n_calibration(self) -> int:
        return self.threshold.n_calibration_clips

    def lines(self) -> list[str]:
        ids = " ".join(f"{k}={v}" for k, v in self.clips_per_id.items())
        s = self.seconds
        t = self.threshold
        val = "" if self.val_loss is None else f", val_loss {self.val_loss:.4f}"
        if t.scores_from == "cross_fit":
            scored = f"out-of-fold scores of all {t.n_calibration_clips} clips ({t.folds}-fold cross-fit)"
            training = f"{self.n_train} train (every one also held out once)"
        else:
            scored = f"{t.n_calibration_clips} held-out normal clips"
            training = f"{self.n_train} train, {self.n_validation} validation"
        out = [
            f"fit summary ({self.arch}) -> {self.out}",
            f"  clips      {self.n_train + self.n_validation} read of {self.n_files} files "
            f"({training}); per ID: {ids}",
            f"  audio      {self.hours:.2f} h",
            f"  skipped    {len(self.skipped)}",
        ]
        out += [f"    {name}: {reason}" for name, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            out.append(f"    ... and {len(self.skipped) - 20} more (listed in threshold.json)")
        if self.ignored_anomalies:
            out.append(f"  ignored    {self.ignored_anomalies} files named anomaly_* (not trained on)")
        out += [
            f"  epochs     {self.epochs_run} run, best {self.best_epoch}: loss {self.loss:.4f}{val}"
            if t.scores_from != "cross_fit"
            else f"  epochs     {self.epochs_run} run (the folds' median optimiser steps to their best epoch), loss {self.loss:.4f}; "
            f"folds' held-out loss {self.val_loss:.4f}",
            f"  time       features {s['features']:.1f} s, training {s['training']:.1f} s, "
            f"export {s['export']:.1f} s, total {s['total']:.1f} s",
            f"  onnx       max |onnx - keras| = {self.max_onnx_difference:.2e}",
            f"  scoring    {self.scoring}",
            f"  threshold  {t.value:.6g} model-wide (gamma q={t.quantile:.3f} on {scored}); "
            f"empirical false-alarm rate {t.empirical_false_alarm_rate:.3f} (target {1 - t.quantile:.3f})",
            f"             {_precision(t)}",
            *self.id_lines(),
        ]
        return out

    def id_lines(self) -> list[str]:
        """Per machine ID: its own threshold, calibrated and empirical false-alarm rates, precision."""
        if not self.threshold.per_id:
            return [
                "  per ID     none: fewer than 10 calibration clips per ID; every ID uses the model-wide one"
            ]
        ids = np.asarray(self.calibration_ids)
        # The model-wide column: this ID's clips as a request without a machine ID scores them.
        wide = self.calibration_scores_wide
        wide = self.calibration_scores if wide is None else wide
        rows = [
            ("ID", "threshold", "clips", "target", "empirical", "model-wide", "90 % interval", "for +/-3")
        ]
        for mid, fit in self.threshold.per_id.items():
            unnamed = float(np.mean(wide[ids == mid] > self.threshold.value))
            lo, hi = fit.false_alarm_interval or (float("nan"), float("nan"))
            rows.append(
                (
                    mid,
                    f"{fit.value:.6g}",
                    str(fit.n_calibration_clips),
                    f"{1 - fit.quantile:.3f}",
                    f"{fit.empirical_false_alarm_rate:.3f}",
                    f"{unnamed:.3f}",
                    f"{lo:.3f}-{hi:.3f}",
                    str(fit.clips_for_3_points),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        table = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
        note = (
            "(empirical: this ID's calibration clips above its own threshold; model-wide: above the "
            "model-wide one)"
        )
        return [
            "  per ID     " + table[0],
            *("             " + line for line in table[1:]),
            "             " + note,
        ]


def _precision(fit: ThresholdFit) -> str:
    """How far the calibration can be trusted, in words."""
    if fit.false_alarm_interval is None:
        return "precision unknown"
    lo, hi = fit.false_alarm_interval
    more = (fit.clips_for_3_points or fit.n_calibration_clips) - fit.n_calibration_clips
    tail = (
        "already within +/- 3 points"
        if more <= 0
        else f"about {more} more clips would narrow it to +/- 3 points"
    )
    return f"90 % interval of the false-alarm rate on new normal clips: {lo:.3f}-{hi:.3f}; {tail}"


TRAINING_CURVES_FILE = "training_curves.png"


def min_seconds_for(options: FitOptions) -> float:
    """Shortest clip that still gives one patch (`Detector.min_samples`), in seconds."""
    assert options.frames is not None
    return (options.frames - 1) * options.features.hop_length / options.features.sample_rate


def read_training_clips(data_root: Path, options: FitOptions) -> tuple[LoadResult, int, int]:
    """Decode and featurise the training WAVs. Returns (result, n_files, n_ignored_anomalies)."""
    files = list_clips(data_root, machine_type=options.machine_type, split="train", ids=options.ids)
    # A plain folder may mix in recordings labelled anomalous; learning them as normal would hide them.
    usable = [f for f in files if f.label != "anomaly"]
    ignored = len(files) - len(usable)
    if not usable:
        raise DatasetError(
            f"all {len(files)} WAV files under {data_root} are named anomaly_*; nothing to train on"
        )
    with tqdm(total=len(usable), desc="features", unit="clip", disable=not options.progress) as bar:
        result = load_features(
            usable,
            params=options.features,
            channel=options.channel,
            min_seconds=min_seconds_for(options),
            workers=options.workers,
            progress=bar.update,
        )
    if not result.clips:
        first = "; ".join(f"{s.path.name}: {s.reason}" for s in result.skipped[:3])
        raise DatasetError(f"none of the {len(usable)} WAV files could be used ({first})")
    return result, len(usable), ignored


def train_keras(
    x_train: np.ndarray,
    x_val: np.ndarray | None,
    options: FitOptions,
    *,
    stream: TextIO | None = None,
    label: str = "",
    max_steps: int | None = None,
) -> tuple[object, dict[str, list[float]]]:
    """Fit the autoencoder on patches in the graph layout; returns (keras.Model, history).

    Adam on the MSE plus the L2 penalties (what Keras reports as `loss`),
    shuffled mini-batches, the validation MSE plus penalties (`val_loss`)
    after each epoch, early stopping after `patience` epochs without a
    better `val_loss`, and the best epoch's weights restored at the end.
    Without `x_val` (a cross-fit's final model) it runs `options.epochs`
    epochs, or stops after `max_steps` optimiser steps (mid-epoch if need
    be), and keeps the last weights.

    The loop is written out rather than `model.fit`: on this project's
    2-core reference machine, `fit` ran about half of its epochs with all
    work on the calling thread (173 ms per CAE step instead of 85-100 ms,
    at random, with or without XLA or oneDNN), while a compiled step called
    from Python never did (models/README.md, "Training speed").
    """
    import keras
    import tensorflow as tf

    from training.model import build_model

    stream = sys.stdout if stream is None else stream
    keras.utils.set_random_seed(options.seed)
    # Deterministic kernels cost little on CPU and make a seed reproduce a model.
    tf.config.experimental.enable_op_determinism()
    assert options.frames is not None and options.epochs is not None and options.batch_size is not None
    model = build_model(options.arch, n_mels=options.features.n_mels, frames=options.frames, cae=options.cae)
    optimizer = keras.optimizers.Adam(learning_rate=options.learning_rate)
    spec = tf.TensorSpec((None, *x_train.shape[1:]), tf.float32)

    def penalised_mse(batch: tf.Tensor, *, training: bool) -> tf.Tensor:
        error = tf.reduce_mean(tf.square(model(batch, training=training) - batch))
        return error + tf.add_n(model.losses) if model.losses else error

    @tf.function(input_signature=[spec])
    def train_step(batch: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = penalised_mse(batch, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    @tf.function(input_signature=[spec])
    def val_step(batch: tf.Tensor) -> tf.Tensor:
        return penalised_mse(batch, training=False)

    def batches(x: np.ndarray, order: np.ndarray | None = None):
        for start in range(0, len(x), options.batch_size):
            rows = slice(start, start + options.batch_size)
            yield x[rows] if order is None else x[order[rows]]

    rng = np.random.default_rng(options.seed)
    history: dict[str, list[float]] = {"loss": [], "val_loss": []}
    best_loss, best_weights, waited = np.inf, None, 0
    n_steps = -(-len(x_train) // options.batch_size)
    show_bar = options.progress and sys.stderr.isatty()
    steps_left = np.inf if max_steps is None else max_steps
    for epoch in range(1, options.epochs + 1):
        if steps_left <= 0:
            break
        began = time.perf_counter()
        total, seen = 0.0, 0
        desc = f"epoch {epoch}/{options.epochs}"
        with tqdm(total=n_steps, desc=desc, unit="step", disable=not show_bar, leave=False) as bar:
            for batch in batches(x_train, rng.permutation(len(x_train))):
                if steps_left <= 0:
                    break
                steps_left -= 1
                total += float(train_step(batch)) * len(batch)
                seen += len(batch)
                bar.update()
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        if x_val is None:
            val_loss = 0.0
        else:
            val_loss = sum(float(val_step(b)) * len(b) for b in batches(x_val)) / max(len(x_val), 1)
        if not (np.isfinite(total) and np.isfinite(val_loss)):
            raise TrainingError(
                f"training diverged in epoch {epoch}: the loss is {total / seen}, val_loss {val_loss}; "
                f"try a lower --learning-rate (now {options.learning_rate:g})"
            )
        history["loss"].append(total / seen)
        if x_val is None:
            if options.progress:
                print(
                    f"{label}{desc}: loss {total / seen:.4f} ({time.perf_counter() - began:.0f} s)",
                    file=stream,
                    flush=True,
                )
            continue
        history["val_loss"].append(val_loss)
        if options.progress:
            print(
                f"{label}{desc}: loss {total / seen:.4f}, val_loss {val_loss:.4f} "
                f"({time.perf_counter() - began:.0f} s)",
                file=stream,
                flush=True,
            )
        if val_loss < best_loss:
            best_loss, best_weights, waited = val_loss, model.get_weights(), 0
        else:
            waited += 1
            if waited >= options.patience:
                if options.progress:
                    message = f"early stop: no better val_loss for {options.patience} epochs"
                    print(message, file=stream, flush=True)
                break
    if best_weights is not None and x_val is not None:
        model.set_weights(best_weights)
    return model, history


def choose_calibration(options: FitOptions, clips_per_id: dict[str, int]) -> Literal["cross-fit", "holdout"]:
    """`options.calibration`, with `auto` resolved by the smallest ID's clip count (`CROSS_FIT_BELOW`)."""
    if options.calibration != "auto":
        return options.calibration
    return "cross-fit" if min(clips_per_id.values()) < CROSS_FIT_BELOW else "holdout"


def assign_folds(clips: Sequence[FeatureClip], *, folds: int, seed: int) -> np.ndarray:
    """Fold index of each clip, shape (len(clips),): each ID's clips shuffled and dealt round the folds.

    Dealing per ID keeps every ID in (nearly) every fold; the offset carries on
    from one ID to the next so that small IDs do not all land in the first folds.
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(clips), dtype=np.int64)
    by_id: dict[str, list[int]] = {}
    for index, clip in enumerate(clips):
        by_id.setdefault(clip.file.machine_id, []).append(index)
    offset = 0
    for machine_id in sorted(by_id):
        indices = np.asarray(by_id[machine_id])
        order = rng.permutation(len(indices))
        fold[indices[order]] = (offset + np.arange(len(indices))) % folds
        offset += len(indices)
    return fold


@dataclass
class _Trained:
    """The exported model's training, whichever way the calibration scores were made."""

    model: object  # keras.Model
    history: dict[str, list[float]]
    normalizer: Normalizer
    check_inputs: np.ndarray
    calibration: Calibration
    train_clips: list[FeatureClip]
    val_clips: list[FeatureClip]
    best_epoch: int
    val_loss: float | None
    fold_best_epochs: list[int] | None = None
    fold_val_losses: list[float] | None = None
    envelopes: Envelopes | None = None  # the exported model's, fitted on the clips it trained on


def run_fit(
    data_root: Path,
    out: Path,
    options: FitOptions,
    *,
    command: str | None = None,
    stream: TextIO | None = None,
) -> FitSummary:
    """Train, calibrate and export a detector to `out`; prints progress and the summary to `stream`."""
    stream = sys.stdout if stream is None else stream
    options = options.resolved()
    assert options.frames is not None and options.patch_hop is not None
    quantile = quantile_for(options.false_alarm_rate)
    started = time.perf_counter()

    loaded, n_files, ignored = read_training_clips(Path(data_root), options)
    if len(loaded.clips) < MIN_FIT_CLIPS:
        raise DatasetError(
            f"only {len(loaded.clips)} readable clip(s); fit needs at least {MIN_FIT_CLIPS} normal clips "
            "(about 2 minutes of 10-s recordings)"
        )
    mode = choose_calibration(options, loaded.clips_per_id())
    features_done = time.perf_counter()
    if mode == "holdout":
        trained = _fit_holdout(loaded.clips, options, stream)
    else:
        trained = _fit_cross(loaded.clips, options, stream, data_root=str(data_root))
    training_done = time.perf_counter()
    history = trained.history

    seconds = {"features": features_done - started, "training": training_done - features_done}
    ids = sorted(loaded.clips_per_id())
    training = Training(
        trained_at=datetime.now(UTC),
        data_root=str(data_root),
        n_clips=len(trained.train_clips),
        n_validation_clips=len(trained.val_clips),
        hours=loaded.hours,
        clips_per_id=loaded.clips_per_id(),
        skipped_files=len(loaded.skipped),
        epochs_run=len(history["loss"]),
        seed=options.seed,
        final_loss=history["loss"][trained.best_epoch - 1],
        final_val_loss=trained.val_loss,
        command=command,
        arch_options=_arch_options(options),
        validation_clips_per_id=dict(sorted(Counter(c.file.machine_id for c in trained.val_clips).items())),
        validation_files=[c.file.path.name for c in trained.val_clips],
        skipped_names=[s.path.name for s in loaded.skipped],
        best_epoch=trained.best_epoch,
        loss_history=history["loss"],
        val_loss_history=history.get("val_loss") or None,
        seconds={k: round(v, 2) for k, v in seconds.items()},
        fold_best_epochs=trained.fold_best_epochs,
        fold_val_losses=trained.fold_val_losses,
    )
    stats = [c.stats for c in loaded.clips if c.stats is not None]
    fingerprint = build_fingerprint(stats, [c.file.machine_id for c in loaded.clips if c.stats is not None])
    to_score = 0 if trained.calibration.scores is not None else len(trained.calibration.paths)
    with tqdm(
        total=to_score, desc="calibrate", unit="clip", disable=not options.progress or not to_score
    ) as bar:
        result = export_detector(
            trained.model,
            out=Path(out),
            candidate=_candidate(options, trained.normalizer, ids, envelopes=trained.envelopes),
            check_inputs=trained.check_inputs,
            calibration=trained.calibration,
            channel=options.channel,
            quantile=quantile,
            training=training,
            fingerprint=fingerprint,
            progress=bar.update,
        )
    finished = time.perf_counter()
    seconds.update(export=finished - training_done, total=finished - started)
    from training.plots import plot_training_curves

    plot_training_curves(
        history,
        Path(out) / TRAINING_CURVES_FILE,
        title=f"{options.machine_type} {options.arch}: training curves",
    )
    summary = FitSummary(
        out=Path(out),
        arch=options.arch,
        n_files=n_files,
        n_train=len(trained.train_clips),
        n_validation=len(trained.val_clips),
        clips_per_id=loaded.clips_per_id(),
        hours=loaded.hours,
        skipped=[(s.path.name, s.reason) for s in loaded.skipped],
        ignored_anomalies=ignored,
        epochs_run=training.epochs_run,
        best_epoch=trained.best_epoch,
        loss=history["loss"][trained.best_epoch - 1],
        val_loss=trained.val_loss,
        seconds=seconds,
        threshold=result.threshold,
        calibration_scores=result.calibration_scores,
        calibration_ids=list(trained.calibration.machine_ids),
        max_onnx_difference=result.max_onnx_difference,
        keras_model=trained.model,
        calibration_scores_wide=result.calibration_scores_wide,
        raw_scores=result.raw_scores,
        scoring=_describe_scoring(options, trained.calibration),
    )
    for line in summary.lines():
        print(line, file=stream)
    stream.flush()
    return summary


def _candidate(
    options: FitOptions, normalizer: Normalizer, ids: Sequence[str], *, envelopes: Envelopes | None = None
) -> Candidate:
    assert options.frames is not None and options.patch_hop is not None
    return Candidate(
        arch=options.arch,
        params=options.features,
        frames=options.frames,
        hop=options.patch_hop,
        normalizer=normalizer,
        machine_type=options.machine_type,
        machine_ids=list(ids),
        pooling=options.pooling,
        pooling_param=options.pooling_param,
        envelopes=envelopes,
        fused=options.fused,
    )


def _describe_scoring(options: FitOptions, calibration: Calibration) -> str:
    pooling = options.pooling
    if options.pooling_param is not None:
        pooling += f" {options.pooling_param:g}"
    if not options.fused:
        return f"cae, {pooling} pooling"
    where = "out-of-fold" if calibration.scores_from == "cross_fit" else "held-out"
    return (
        f"cae ({pooling} pooling) + envelope, each standardised per ID on {where} normal scores, "
        "thresholds on the fused scores"
    )


def _envelopes(clips: Sequence[FeatureClip], options: FitOptions, *, own_ids: Sequence[str]) -> Envelopes:
    """Envelope Gaussians of the scoring model's training clips: all of them and each of `own_ids`'."""
    levels = np.stack([c.spec.mean(axis=1, dtype=np.float64) for c in clips])
    return fit_envelopes(
        levels,
        [c.file.machine_id for c in clips],
        edges=band_edges(n_mels=options.features.n_mels),
        own_ids=own_ids,
    )


def _own_ids(clips: Sequence[FeatureClip]) -> list[str]:
    """IDs with enough calibration clips for their own threshold, hence their own envelope entry."""
    counts = Counter(c.file.machine_id for c in clips)
    return sorted(mid for mid, n in counts.items() if n >= MIN_ID_CLIPS)


def _fit_holdout(clips: list[FeatureClip], options: FitOptions, stream: TextIO) -> _Trained:
    """One model; whole clips per ID held out for early stopping and the threshold."""
    train_clips, val_clips = split_validation(clips, fraction=options.val_fraction, seed=options.seed)
    if len(val_clips) < MIN_CALIBRATION_CLIPS:
        raise DatasetError(
            f"only {len(val_clips)} validation clip(s) from {len(clips)} readable clips; the threshold "
            f"needs at least {MIN_CALIBRATION_CLIPS}: add clips, raise --val-fraction or use --calibration cross-fit"
        )
    normalizer = fit_normalizer(c.spec for c in train_clips)
    x_train = _patches(train_clips, normalizer, options)
    x_val = _patches(val_clips, normalizer, options)
    print(
        f"{len(train_clips)} training clips ({len(x_train)} patches), {len(val_clips)} validation clips "
        f"({len(x_val)} patches); threshold from the validation clips",
        file=stream,
        flush=True,
    )
    model, history = train_keras(x_train, x_val, options, stream=stream)
    # train_keras runs at least one epoch and raises on a non-finite loss, so both lists are full and finite.
    best = int(np.argmin(history["val_loss"]))
    envelopes = _envelopes(train_clips, options, own_ids=_own_ids(val_clips)) if options.fused else None
    return _Trained(
        model=model,
        history=history,
        normalizer=normalizer,
        check_inputs=x_val,
        calibration=Calibration(
            paths=[c.file.path for c in val_clips],
            machine_ids=[c.file.machine_id for c in val_clips],
            scores_from="holdout",
        ),
        train_clips=train_clips,
        val_clips=val_clips,
        best_epoch=best + 1,
        val_loss=history["val_loss"][best],
        envelopes=envelopes,
    )


def _fit_cross(clips: list[FeatureClip], options: FitOptions, stream: TextIO, *, data_root: str) -> _Trained:
    """k fold models score the clips they did not see; the exported model learns from all clips.

    Each fold model stops early on its own held-out fold; the final model runs
    the median of their optimiser steps up to the best epoch, since no clip
    is left to stop it.
    """
    k = min(options.folds, len(clips))
    fold = assign_folds(clips, folds=k, seed=options.seed)
    print(
        f"{len(clips)} clips: {k}-fold cross-fit, then a final model on all of them", file=stream, flush=True
    )
    scores = np.empty(len(clips), dtype=np.float64)
    own_ids = _own_ids(clips)
    envelope_own = np.empty(len(clips), dtype=np.float64)
    envelope_wide = np.empty(len(clips), dtype=np.float64)
    best_epochs: list[int] = []
    best_steps: list[int] = []
    fold_level: list[dict[str | None, float]] = []
    val_losses: list[float] = []
    scratch = Training(
        trained_at=datetime.now(UTC),
        data_root=data_root,
        n_clips=len(clips),
        n_validation_clips=0,
        hours=0.0,
        clips_per_id={},
        skipped_files=0,
        epochs_run=0,
        seed=options.seed,
    )
    for f in range(k):
        held = np.flatnonzero(fold == f)
        kept = [c for i, c in enumerate(clips) if fold[i] != f]
        out_clips = [clips[i] for i in held]
        normalizer = fit_normalizer(c.spec for c in kept)
        x_kept = _patches(kept, normalizer, options)
        model, history = train_keras(
            x_kept,
            _patches(out_clips, normalizer, options),
            options,
            stream=stream,
            label=f"fold {f + 1}/{k} ",
        )
        best = int(np.argmin(history["val_loss"]))
        best_epochs.append(best + 1)
        best_steps.append((best + 1) * -(-len(x_kept) // options.batch_size))
        del x_kept
        val_losses.append(history["val_loss"][best])
        # Each fold's envelope Gaussians see only its training clips, as its CAE does.
        # One export scores the held-out clips and, for the alignment below, the fold's own training clips.
        both = out_clips + kept
        raw = raw_scores_with_model(
            model,
            _candidate(options, normalizer, sorted({c.file.machine_id for c in clips})),
            [c.file.path for c in both],
            machine_ids=[c.file.machine_id for c in both],
            envelopes=_envelopes(kept, options, own_ids=own_ids) if options.fused else None,
            training=scratch,
            channel=options.channel,
        )
        scores[held] = raw.cae[: len(out_clips)]
        fold_level.append(_levels(raw.cae[len(out_clips) :], [c.file.machine_id for c in kept]))
        if options.fused:
            assert raw.envelope_own is not None and raw.envelope_wide is not None
            envelope_own[held] = raw.envelope_own[: len(out_clips)]
            envelope_wide[held] = raw.envelope_wide[: len(out_clips)]
        del model
    # The final model takes as many optimiser steps as the median fold model did up to its best epoch,
    # not as many epochs: with few clips the loss is still falling at the last epoch, and a model that
    # took more steps scores new normal clips lower than the folds scored theirs, so the threshold
    # would flag far fewer than the target share (models/README.md, "Calibration").
    steps = max(1, round(float(np.median(best_steps))))
    normalizer = fit_normalizer(c.spec for c in clips)
    x_all = _patches(clips, normalizer, options)
    per_epoch = -(-len(x_all) // options.batch_size)
    epochs = -(-steps // per_epoch)
    model, history = train_keras(
        x_all, None, replace(options, epochs=epochs), stream=stream, label="final ", max_steps=steps
    )
    check_inputs = x_all[:MAX_CHECK_PATCHES].copy()
    del x_all
    # Each fold model has its own score level (its initialisation and training path), and pooling
    # the folds' scores adds those offsets to the spread: the threshold lands far above the final
    # model's own normal scores (models/README.md, "Calibration"). So each out-of-fold score keeps
    # its distance from its fold model's level on that model's training clips of the same ID, and is
    # placed on the final model's level on its training clips.
    ids = [c.file.machine_id for c in clips]
    final_level = _levels(
        score_with_model(
            model,
            _candidate(options, normalizer, sorted(set(ids))),
            [c.file.path for c in clips],
            training=scratch,
            channel=options.channel,
        ),
        ids,
    )
    for i, machine_id in enumerate(ids):
        level = fold_level[fold[i]]
        scores[i] += final_level.get(machine_id, final_level[None]) - level.get(machine_id, level[None])
    fused = options.fused
    return _Trained(
        model=model,
        history=history,
        normalizer=normalizer,
        check_inputs=check_inputs,
        calibration=Calibration(
            paths=[c.file.path for c in clips],
            machine_ids=[c.file.machine_id for c in clips],
            scores_from="cross_fit",
            scores=scores,
            folds=k,
            raw=RawScores(cae=scores, envelope_own=envelope_own, envelope_wide=envelope_wide)
            if fused
            else None,
        ),
        train_clips=list(clips),
        val_clips=[],
        best_epoch=epochs,
        val_loss=float(np.mean(val_losses)),
        fold_best_epochs=best_epochs,
        fold_val_losses=val_losses,
        envelopes=_envelopes(clips, options, own_ids=own_ids) if fused else None,
    )


def _levels(scores: np.ndarray, machine_ids: Sequence[str]) -> dict[str | None, float]:
    """Median score per machine ID, and over all clips under the key None."""
    ids = np.asarray(machine_ids)
    levels: dict[str | None, float] = {None: float(np.median(scores))}
    levels.update({mid: float(np.median(scores[ids == mid])) for mid in sorted(set(machine_ids))})
    return levels


def _patches(clips: list[FeatureClip], normalizer: Normalizer, options: FitOptions) -> np.ndarray:
    assert options.frames is not None and options.patch_hop is not None
    return patch_array(
        [c.spec for c in clips],
        normalizer=normalizer,
        frames=options.frames,
        hop=options.patch_hop,
        arch=options.arch,
    )


def _arch_options(options: FitOptions) -> dict[str, object]:
    common: dict[str, object] = {
        "batch_size": options.batch_size,
        "max_epochs": options.epochs,
        "patience": options.patience,
        "learning_rate": options.learning_rate,
        "val_fraction": options.val_fraction,
        "channel": options.channel,
    }
    if options.arch == "cae":
        common.update(asdict(options.cae), filters=list(options.cae.filters))
    return common

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

TensorFlow is imported only when training starts, so a wrong data folder
is reported at once rather than after TensorFlow's import.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from service.audio import Channel
from service.bundle import Training
from service.features import FeatureParams
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
from training.export import export_detector
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
    workers: int = 2
    progress: bool = True

    def resolved(self) -> FitOptions:
        """A copy with every None default filled in for `arch`, validated."""
        if self.arch not in ARCH_DEFAULTS:
            raise DatasetError(f"unknown architecture {self.arch!r}; choose cae or dense")
        defaults = ARCH_DEFAULTS[self.arch]
        done = replace(
            self,
            frames=defaults["frames"] if self.frames is None else self.frames,
            patch_hop=defaults["patch_hop"] if self.patch_hop is None else self.patch_hop,
            epochs=defaults["epochs"] if self.epochs is None else self.epochs,
            batch_size=defaults["batch_size"] if self.batch_size is None else self.batch_size,
        )
        for name in ("frames", "patch_hop", "epochs", "batch_size"):
            if getattr(done, name) <= 0:
                raise DatasetError(f"{name.replace('_', '-')} must be positive, got {getattr(done, name)}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise DatasetError(f"learning-rate must be a positive number, got {self.learning_rate}")
        if self.patience < 0:
            raise DatasetError(f"patience must be >= 0, got {self.patience}")
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
    val_loss: float
    seconds: dict[str, float]  # features, training, export, total
    threshold: float
    quantile: float
    empirical_far: float
    n_calibration: int
    max_onnx_difference: float
    keras_model: object = field(default=None, repr=False, compare=False)  # the trained keras.Model

    def lines(self) -> list[str]:
        ids = " ".join(f"{k}={v}" for k, v in self.clips_per_id.items())
        s = self.seconds
        out = [
            f"fit summary ({self.arch}) -> {self.out}",
            f"  clips      {self.n_train + self.n_validation} read of {self.n_files} files "
            f"({self.n_train} train, {self.n_validation} validation); per ID: {ids}",
            f"  audio      {self.hours:.2f} h",
            f"  skipped    {len(self.skipped)}",
        ]
        out += [f"    {name}: {reason}" for name, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            out.append(f"    ... and {len(self.skipped) - 20} more (listed in threshold.json)")
        if self.ignored_anomalies:
            out.append(f"  ignored    {self.ignored_anomalies} files named anomaly_* (not trained on)")
        out += [
            f"  epochs     {self.epochs_run} run, best {self.best_epoch}: loss {self.loss:.4f}, "
            f"val_loss {self.val_loss:.4f}",
            f"  time       features {s['features']:.1f} s, training {s['training']:.1f} s, "
            f"export {s['export']:.1f} s, total {s['total']:.1f} s",
            f"  onnx       max |onnx - keras| = {self.max_onnx_difference:.2e}",
            f"  threshold  {self.threshold:.6g} (gamma q={self.quantile:.3f} on {self.n_calibration} held-out "
            f"normal clips); empirical false-alarm rate {self.empirical_far:.3f} "
            f"(target {1 - self.quantile:.3f})",
        ]
        return out


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
        raise DatasetError(f"all {len(files)} WAV files under {data_root} are named anomaly_*; nothing to train on")
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
    x_train: np.ndarray, x_val: np.ndarray, options: FitOptions, *, stream: TextIO | None = None
) -> tuple[object, dict[str, list[float]]]:
    """Fit the autoencoder on patches in the graph layout; returns (keras.Model, history).

    Adam on the MSE plus the L2 penalties (what Keras reports as `loss`),
    shuffled mini-batches, the validation MSE plus penalties (`val_loss`)
    after each epoch, early stopping after `patience` epochs without a
    better `val_loss`, and the best epoch's weights restored at the end.

    The loop is written out rather than `model.fit`: on this project's
    2-core reference machine, `fit` ran about half of its epochs with all
    work on the calling thread (173 ms per CAE step instead of 85-100 ms,
    at random, with or without XLA or oneDNN), while a compiled step called
    from Python never did (models/README.md, "Training speed").
    """
    import tensorflow as tf
    import keras

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
    for epoch in range(1, options.epochs + 1):
        began = time.perf_counter()
        total, seen = 0.0, 0
        desc = f"epoch {epoch}/{options.epochs}"
        with tqdm(total=n_steps, desc=desc, unit="step", disable=not show_bar, leave=False) as bar:
            for batch in batches(x_train, rng.permutation(len(x_train))):
                total += float(train_step(batch)) * len(batch)
                seen += len(batch)
                bar.update()
                bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        val_loss = sum(float(val_step(b)) * len(b) for b in batches(x_val)) / max(len(x_val), 1)
        if not (np.isfinite(total) and np.isfinite(val_loss)):
            raise TrainingError(
                f"training diverged in epoch {epoch}: the loss is {total / seen}, val_loss {val_loss}; "
                f"try a lower --learning-rate (now {options.learning_rate:g})"
            )
        history["loss"].append(total / seen)
        history["val_loss"].append(val_loss)
        if options.progress:
            print(f"{desc}: loss {total / seen:.4f}, val_loss {val_loss:.4f} "
                  f"({time.perf_counter() - began:.0f} s)", file=stream, flush=True)
        if val_loss < best_loss:
            best_loss, best_weights, waited = val_loss, model.get_weights(), 0
        else:
            waited += 1
            if waited >= options.patience:
                if options.progress:
                    message = f"early stop: no better val_loss for {options.patience} epochs"
                    print(message, file=stream, flush=True)
                break
    if best_weights is not None:
        model.set_weights(best_weights)
    return model, history


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
    train_clips, val_clips = split_validation(loaded.clips, fraction=options.val_fraction, seed=options.seed)
    if len(val_clips) < MIN_CALIBRATION_CLIPS:
        raise DatasetError(
            f"only {len(val_clips)} validation clip(s) from {len(loaded.clips)} readable clips; the threshold "
            f"needs at least {MIN_CALIBRATION_CLIPS}: add clips or raise --val-fraction"
        )
    normalizer = fit_normalizer(c.spec for c in train_clips)
    x_train = _patches(train_clips, normalizer, options)
    x_val = _patches(val_clips, normalizer, options)
    features_done = time.perf_counter()
    print(
        f"{len(train_clips)} training clips ({len(x_train)} patches), {len(val_clips)} validation clips "
        f"({len(x_val)} patches), {len(loaded.skipped)} skipped",
        file=stream,
        flush=True,
    )

    model, history = train_keras(x_train, x_val, options, stream=stream)
    training_done = time.perf_counter()
    del x_train  # hundreds of MB; the export needs only the validation patches

    # train_keras runs at least one epoch and raises on a non-finite loss, so both lists are full and finite.
    val_losses = history["val_loss"]
    best = int(np.argmin(val_losses))
    seconds = {"features": features_done - started, "training": training_done - features_done}
    ids = sorted(loaded.clips_per_id())
    training = Training(
        trained_at=datetime.now(timezone.utc),
        data_root=str(data_root),
        n_clips=len(train_clips),
        n_validation_clips=len(val_clips),
        hours=loaded.hours,
        clips_per_id=loaded.clips_per_id(),
        skipped_files=len(loaded.skipped),
        epochs_run=len(history["loss"]),
        seed=options.seed,
        final_loss=history["loss"][best],
        final_val_loss=val_losses[best],
        command=command,
        arch_options=_arch_options(options),
        validation_clips_per_id=dict(sorted(Counter(c.file.machine_id for c in val_clips).items())),
        validation_files=[c.file.path.name for c in val_clips],
        skipped_names=[s.path.name for s in loaded.skipped],
        best_epoch=best + 1,
        loss_history=history["loss"],
        val_loss_history=val_losses,
        seconds={k: round(v, 2) for k, v in seconds.items()},
    )
    with tqdm(total=len(val_clips), desc="calibrate", unit="clip", disable=not options.progress) as bar:
        result = export_detector(
            model,
            out=Path(out),
            arch=options.arch,
            params=options.features,
            frames=options.frames,
            hop=options.patch_hop,
            normalizer=normalizer,
            check_inputs=x_val,
            calibration_paths=[c.file.path for c in val_clips],
            channel=options.channel,
            quantile=quantile,
            machine_type=options.machine_type,
            machine_ids=ids,
            training=training,
            progress=bar.update,
        )
    finished = time.perf_counter()
    seconds.update(export=finished - training_done, total=finished - started)
    from training.plots import plot_training_curves

    plot_training_curves(
        {"loss": history["loss"], "val_loss": val_losses}, Path(out) / TRAINING_CURVES_FILE,
        title=f"{options.machine_type} {options.arch}: training curves",
    )
    summary = FitSummary(
        out=Path(out),
        arch=options.arch,
        n_files=n_files,
        n_train=len(train_clips),
        n_validation=len(val_clips),
        clips_per_id=loaded.clips_per_id(),
        hours=loaded.hours,
        skipped=[(s.path.name, s.reason) for s in loaded.skipped],
        ignored_anomalies=ignored,
        epochs_run=training.epochs_run,
        best_epoch=best + 1,
        loss=history["loss"][best],
        val_loss=val_losses[best],
        seconds=seconds,
        threshold=result.threshold.value,
        quantile=quantile,
        empirical_far=result.threshold.empirical_false_alarm_rate,
        n_calibration=result.threshold.n_clips,
        max_onnx_difference=result.max_onnx_difference,
        keras_model=model,
    )
    for line in summary.lines():
        print(line, file=stream)
    stream.flush()
    return summary


def _patches(clips: list[FeatureClip], normalizer: Normalizer, options: FitOptions) -> np.ndarray:
    assert options.frames is not None and options.patch_hop is not None
    return patch_array(
        [c.spec for c in clips], normalizer=normalizer, frames=options.frames, hop=options.patch_hop, arch=options.arch
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

"""The training loop: Adam on the MSE of an autoencoder's reconstruction, with early stopping.

Seeded (`keras.utils.set_random_seed`) with TensorFlow's deterministic ops,
so a seed reproduces a model. TensorFlow is imported only when training
starts, so a wrong data folder is reported at once rather than after
TensorFlow's import.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TextIO

import numpy as np
from tqdm import tqdm

from training.errors import TrainingDivergedError
from training.fit_options import FitOptions


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

    The loop is written out rather than `model.fit`: on the 2-core reference
    machine `fit` ran about half of its epochs, at random, with all work on
    the calling thread, while a compiled step called from Python never did
    (models/README.md, "Training speed").
    """
    import keras
    import tensorflow as tf

    from training.model import build_model

    stream = sys.stdout if stream is None else stream
    keras.utils.set_random_seed(options.seed)
    # Deterministic kernels cost little on CPU and make a seed reproduce a model.
    tf.config.experimental.enable_op_determinism()
    assert options.frames is not None and options.epochs is not None and options.batch_size is not None
    batch_size = options.batch_size
    model = build_model(options.arch, n_mels=options.features.n_mels, frames=options.frames, cae=options.cae)
    optimizer = keras.optimizers.Adam(learning_rate=options.learning_rate)
    spec = tf.TensorSpec((None, *x_train.shape[1:]), tf.float32)

    def penalised_mse(batch: tf.Tensor, *, training: bool) -> tf.Tensor:
        error = tf.reduce_mean(tf.square(model(batch, training=training) - batch))
        return error + tf.add_n(model.losses) if model.losses else error

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]  # TensorFlow has no type hints
    def train_step(batch: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = penalised_mse(batch, training=True)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    @tf.function(input_signature=[spec])  # type: ignore[untyped-decorator]  # TensorFlow has no type hints
    def val_step(batch: tf.Tensor) -> tf.Tensor:
        return penalised_mse(batch, training=False)

    def batches(x: np.ndarray, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
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
            raise TrainingDivergedError(
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

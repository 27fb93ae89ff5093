"""`train_keras`'s own loop: early stopping, best weights restored, losses as Keras reports them."""

from __future__ import annotations

import io

import numpy as np
import pytest

from training.errors import DatasetError, TrainingDivergedError
from training.fit_options import FitOptions
from training.model import CaeConfig
from training.train import train_keras


def _options(**overrides: object) -> FitOptions:
    base: dict[str, object] = {
        "arch": "cae", "frames": 8, "patch_hop": 8, "epochs": 6, "batch_size": 16, "seed": 0, "progress": True,
        "cae": CaeConfig(filters=(4,), bottleneck=2),
    }  # fmt: skip
    base.update(overrides)
    return FitOptions(**base).resolved()  # type: ignore[arg-type]


def _data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((96, 128, 8, 1)).astype(np.float32)
    return x[:80], x[80:]


def _val_loss(model, x_val: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """The validation loss as the loop defines it: MSE plus the L2 penalties."""
    recon = np.asarray(model(x_val, training=False))
    return float(np.mean(np.square(recon - x_val)) + sum(float(v) for v in model.losses))


def test_diverging_run_stops_early_and_keeps_the_best_epoch() -> None:
    x_train, x_val = _data()
    log = io.StringIO()
    # At this learning rate every epoch after the first is worse (13, 20, 27, ... against 1.0 at the start).
    model, history = train_keras(x_train, x_val, _options(patience=2, learning_rate=1.0), stream=log)
    val = history["val_loss"]
    assert len(val) < 6, "early stopping did not stop a diverging run"
    best = int(np.nanargmin(val))
    assert all(not (v < val[best]) for v in val[best + 1 :])
    assert len(val) == best + 1 + 2  # stopped after exactly `patience` epochs without improvement
    assert abs(_val_loss(model, x_val) - val[best]) < 1e-4 * max(1.0, abs(val[best]))
    assert "early stop" in log.getvalue() and f"epoch 1/6: loss {history['loss'][0]:.4f}" in log.getvalue()


def test_improving_run_runs_every_epoch_and_reports_its_losses() -> None:
    x_train, x_val = _data()
    options = _options(epochs=3, patience=3, progress=False)
    model, history = train_keras(x_train, x_val, options, stream=io.StringIO())
    assert len(history["loss"]) == len(history["val_loss"]) == 3
    assert history["loss"][-1] < history["loss"][0]
    best = int(np.argmin(history["val_loss"]))
    best_loss = history["val_loss"][best]
    assert abs(_val_loss(model, x_val) - best_loss) < 1e-4 * max(1.0, best_loss)


def test_a_loss_that_becomes_nan_is_an_error_not_a_model() -> None:
    x_train, x_val = _data()
    with pytest.raises(TrainingDivergedError, match=r"diverged in epoch 1.*lower --learning-rate"):
        train_keras(x_train, x_val, _options(learning_rate=50.0, progress=False), stream=io.StringIO())


@pytest.mark.parametrize("rate", [0.0, -1e-3, float("nan")])
def test_learning_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(DatasetError, match="learning-rate must be a positive number"):
        _options(learning_rate=rate)

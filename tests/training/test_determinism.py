from __future__ import annotations

import numpy as np

from training.fit_options import FitOptions
from training.model import CaeConfig
from training.train import train_keras


def _weights(seed: int) -> tuple[list[np.ndarray], dict[str, list[float]]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 128, 8, 1)).astype(np.float32)
    options = FitOptions(
        arch="cae", frames=8, patch_hop=8, epochs=2, batch_size=16, seed=seed, progress=False,
        cae=CaeConfig(filters=(4,), bottleneck=2),
    ).resolved()  # fmt: skip
    model, history = train_keras(x[:80], x[80:], options)
    return [np.array(w) for w in model.get_weights()], history


def test_same_seed_same_model_other_seed_other_model() -> None:
    first, history = _weights(7)
    again, history_again = _weights(7)
    other, _ = _weights(8)
    assert len(history["loss"]) == 2 and history == history_again
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))

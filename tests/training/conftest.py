"""Shared fixtures: a tiny synthetic DCASE-layout data set and one tiny model fitted on it.

Both are session-scoped: writing the clips takes a few seconds and a fit
(TensorFlow start-up, tracing, export) about half a minute, so every test
that needs a trained detector shares the one made here.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.synth import generate_dataset

SR = 16000
IDS = ("00", "02")
N_TRAIN = 8
DURATION = 3.0
# The broken files in the training folder; a fit must skip and name them.
GARBAGE = "normal_id_00_99999999.wav"
SHORT = "normal_id_02_99999998.wav"

TINY_FIT_ARGS = [
    "--frames", "16",
    "--patch-hop", "8",
    "--filters", "4,8",
    "--bottleneck", "4",
    "--epochs", "2",
    "--batch-size", "32",
    "--val-fraction", "0.25",
    "--calibration", "holdout",
    "--seed", "3",
    "--quiet",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DCASE layout: slider IDs 00 and 02, 8 train + 3 normal + 3 anomalous 3-s clips each, plus 2 bad files."""
    root = tmp_path_factory.mktemp("data")
    generate_dataset(
        root, ids=IDS, n_train=N_TRAIN, n_test_normal=3, n_test_anomaly=3, seed=1, duration=DURATION
    )
    train = root / "slider" / "train"
    (train / GARBAGE).write_bytes(b"RIFF\x00\x00 this is not a wav file at all" * 10)
    sf.write(train / SHORT, np.zeros(int(0.2 * SR), dtype=np.float32), SR)
    return root


@dataclass(frozen=True)
class Fitted:
    model_dir: Path
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def fitted(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    """`asd-train fit` of a tiny CAE on `tiny_root`, run through the CLI's `main`."""
    from training.cli import main

    out = tmp_path_factory.mktemp("models") / "tiny"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["fit", str(tiny_root), "--out", str(out), "--machine-type", "slider", *TINY_FIT_ARGS])
    return Fitted(model_dir=out, exit_code=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def biased_cae(*, frames: int, config=None):
    """An untrained CAE (seeded) with non-zero biases, as after training; its initial biases are all 0,
    which can leave the decoder's output exactly 0 and hide what a conversion does to offsets."""
    import keras

    from training.model import CaeConfig, build_cae

    keras.utils.set_random_seed(0)
    model = build_cae(n_mels=128, frames=frames, config=CaeConfig() if config is None else config)
    rng = np.random.default_rng(1)
    model.set_weights(
        [
            w if w.ndim > 1 else rng.normal(scale=0.1, size=w.shape).astype(w.dtype)
            for w in model.get_weights()
        ]
    )
    return model


def write_tone(
    path: Path, *, seconds: float = 2.0, rate: int = SR, channels: int = 1, freq: float = 440.0
) -> np.ndarray:
    """A sine (channel c at `freq * (c + 1)`), written as PCM_16; returns the float data (n, channels)."""
    t = np.arange(int(seconds * rate)) / rate
    data = np.stack([0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), rate, subtype="FLOAT")
    return data.astype(np.float32)

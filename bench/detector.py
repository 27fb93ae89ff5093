"""The benchmark's clips and its detector.

Clips: synthetic 10 s slider clips made by `training.synth` (normal and
anomalous test clips, mono PCM_16, 16 kHz) and the real MIMII/DCASE
recordings in `../shared/data/real-recordings` (8-channel and mono PCM_16).
Each is held as its file bytes, so no timing includes the disk.

Detector: trained here, in a temporary folder, by the training package's
own fit (`training.fit.run_fit`, what `asd-train fit` runs), a couple of
epochs on the synthetic training clips. The in-memory Keras model feeds the
naive pipeline, the exported `model.onnx` in onnxruntime's default session
feeds the peer (`onnx_default_predict`) and the exported folder feeds ours,
so all score with the same weights. The architecture and patching are read
from the repository's own model (`models/slider/threshold.json`) when there
is one, so the work per clip is that of the shipped detector; how well it
detects does not matter here.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

if TYPE_CHECKING:
    import keras

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Clip:
    """One recording as the bytes a client would upload."""

    name: str
    source: str  # "synthetic" or "real"
    data: bytes
    seconds: float
    channels: int
    path: Path | None = None


def real_recordings_dir() -> Path:
    """Same lookup as tests/conftest.py: ASD_REAL_RECORDINGS or ../shared/data/real-recordings."""
    override = os.environ.get("ASD_REAL_RECORDINGS")
    return Path(override) if override else REPO.parent / "shared" / "data" / "real-recordings"


def read_clips(paths: Sequence[Path], *, source: str) -> list[Clip]:
    clips = []
    for path in paths:
        info = sf.info(str(path))
        clips.append(
            Clip(
                name=path.name,
                source=source,
                data=path.read_bytes(),
                seconds=info.frames / info.samplerate,
                channels=info.channels,
                path=path,
            )
        )
    return clips


def real_clips() -> list[Clip]:
    folder = real_recordings_dir()
    paths = sorted(folder.glob("*/*.wav"))
    if not paths:
        raise FileNotFoundError(f"no real recordings under {folder}; set ASD_REAL_RECORDINGS")
    return read_clips(paths, source="real")


def make_synthetic_data(
    root: Path,
    *,
    ids: Sequence[str] = ("00", "02"),
    n_train: int,
    n_test_normal: int,
    n_test_anomaly: int,
    seconds: float = 10.0,
    seed: int = 0,
) -> Path:
    """DCASE layout under `root` (slider); returns the machine folder root/slider."""
    from training.synth import generate_dataset

    summary = generate_dataset(
        root,
        machine_type="slider",
        ids=tuple(ids),
        n_train=n_train,
        n_test_normal=n_test_normal,
        n_test_anomaly=n_test_anomaly,
        seed=seed,
        duration=seconds,
    )
    return summary.root


def synthetic_test_clips(machine_root: Path) -> list[Clip]:
    return read_clips(sorted((machine_root / "test").glob("*.wav")), source="synthetic")


@dataclass(frozen=True)
class Architecture:
    arch: str = "cae"
    frames: int | None = None
    hop: int | None = None
    filters: tuple[int, ...] | None = None
    bottleneck: int | None = None
    source: str = "training defaults"


def reference_architecture(folder: Path) -> Architecture:
    """The architecture and patching of an exported detector folder (defaults when it has none)."""
    from service.bundle import Bundle

    try:
        bundle = Bundle.read(folder)
    except (OSError, ValueError):
        return Architecture()
    options = bundle.training.arch_options or {}
    filters = options.get("filters")
    return Architecture(
        arch=bundle.model.arch,
        frames=bundle.patching.frames,
        hop=bundle.patching.hop,
        filters=tuple(int(f) for f in filters) if filters else None,
        bottleneck=int(options["bottleneck"]) if options.get("bottleneck") else None,
        source=str(folder / "threshold.json"),
    )


@dataclass
class TrainedDetector:
    folder: Path
    keras_model: object  # keras.Model
    architecture: Architecture
    seconds: dict[str, float] = field(default_factory=dict)  # features, training, export


def train_detector(
    machine_root: Path,
    out: Path,
    *,
    architecture: Architecture,
    epochs: int = 2,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> TrainedDetector:
    """Fit and export a detector on the training clips under `machine_root` (see module doc)."""
    from training.fit import run_fit
    from training.fit_options import FitOptions
    from training.model import CaeConfig

    default_cae = CaeConfig()
    cae = CaeConfig(
        filters=architecture.filters or default_cae.filters,
        bottleneck=architecture.bottleneck or default_cae.bottleneck,
        l2=default_cae.l2,
    )
    options = FitOptions(
        machine_type="slider",
        arch=architecture.arch,  # type: ignore[arg-type]
        frames=architecture.frames,
        patch_hop=architecture.hop,
        epochs=epochs,
        patience=epochs,
        seed=seed,
        val_fraction=0.2,  # at least 3 calibration clips from a few training clips per ID
        cae=cae,
        progress=False,
    )
    log(f"  training and exporting {options.arch} ({epochs} epochs) ...")
    # The same fit as `asd-train fit`; the benchmark keeps its in-memory Keras model for the naive path.
    summary = run_fit(
        machine_root, out, options, command="python -m bench.run (benchmark detector)", stream=io.StringIO()
    )
    return TrainedDetector(
        folder=out,
        keras_model=summary.keras_model,
        architecture=architecture,
        seconds={k: summary.seconds[k] for k in ("features", "training", "export")},
    )


def keras_predict(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """`model.predict` as a user calls it (default batch size 32, no progress bar)."""

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(batch, verbose=0))

    return predict


def onnx_default_predict(model_path: Path, *, input_name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The exported graph in onnxruntime as a user opens it: default `SessionOptions`, one run per clip.

    No thread counts, no spinning setting: onnxruntime's defaults (a pool the
    size of the machine's physical cores, spinning between runs), the peer a
    competent user would write in place of Keras' `predict`.
    """
    import onnxruntime as ort

    # Providers are not SessionOptions; naming the CPU one keeps GPU builds on the same kernels.
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: batch})[0])

    return predict

"""The benchmark's clips and its detector.

Clips: synthetic 10 s slider clips made by `training.synth` (normal and
anomalous test clips, mono PCM_16, 16 kHz) and the real MIMII/DCASE
recordings in `../shared/data/real-recordings` (8-channel and mono PCM_16).
Each is held as its file bytes, so no timing includes the disk.

Detector: trained here, in a temporary folder, with the training package's
own steps (`training.train.read_training_clips`, `split_validation`,
`fit_normalizer`, `patch_array`, `train_keras`, then
`training.export.export_detector`), a couple of epochs on the synthetic
training clips. The in-memory Keras model feeds the naive pipeline and the
exported ONNX folder feeds ours, so both score with the same weights. The
architecture and patching are read from the repository's own model
(`models/slider/threshold.json`) when there is one, so the work per clip is
that of the shipped detector; how well it detects does not matter here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

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
    from service.bundle import Training
    from training.dataset import fit_normalizer, patch_array, split_validation
    from training.export import export_detector
    from training.model import CaeConfig
    from training.threshold import quantile_for
    from training.train import FitOptions, read_training_clips, train_keras

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
    ).resolved()
    assert options.frames is not None and options.patch_hop is not None
    started = time.perf_counter()
    loaded, _, _ = read_training_clips(machine_root, options)
    train_clips, val_clips = split_validation(loaded.clips, fraction=options.val_fraction, seed=seed)
    normalizer = fit_normalizer(c.spec for c in train_clips)

    def patches_of(clips):
        return patch_array(
            [c.spec for c in clips],
            normalizer=normalizer,
            frames=options.frames,
            hop=options.patch_hop,
            arch=options.arch,
        )

    x_train, x_val = patches_of(train_clips), patches_of(val_clips)
    features_done = time.perf_counter()
    log(f"  training {options.arch} ({len(x_train)} patches, {epochs} epochs) ...")
    model, history = train_keras(x_train, x_val, options)
    training_done = time.perf_counter()
    training = Training(
        trained_at=datetime.now(timezone.utc),
        data_root=str(machine_root),
        n_clips=len(train_clips),
        n_validation_clips=len(val_clips),
        hours=loaded.hours,
        clips_per_id=loaded.clips_per_id(),
        skipped_files=len(loaded.skipped),
        epochs_run=len(history.get("loss", [])),
        seed=seed,
        command="python -m bench.run (benchmark detector)",
        arch_options={"filters": list(cae.filters), "bottleneck": cae.bottleneck, "epochs": epochs},
    )
    log("  exporting to ONNX and calibrating ...")
    export_detector(
        model,
        out=out,
        arch=options.arch,
        params=options.features,
        frames=options.frames,
        hop=options.patch_hop,
        normalizer=normalizer,
        check_inputs=x_val,
        calibration_paths=[c.file.path for c in val_clips],
        channel=options.channel,
        quantile=quantile_for(None),
        machine_type="slider",
        machine_ids=sorted(loaded.clips_per_id()),
        training=training,
    )
    finished = time.perf_counter()
    return TrainedDetector(
        folder=out,
        keras_model=model,
        architecture=architecture,
        seconds={
            "features": features_done - started,
            "training": training_done - features_done,
            "export": finished - training_done,
        },
    )


def keras_predict(model) -> Callable[[np.ndarray], np.ndarray]:
    """`model.predict` as a user calls it (default batch size 32, no progress bar)."""

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(batch, verbose=0))

    return predict

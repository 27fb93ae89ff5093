"""Scoring labelled test clips through `service.detector.Detector`, the code the service runs.

`find_test_clips` finds a machine type's labelled test clips per machine ID
(`select_ids` checks the IDs asked for have both classes), `load_detector`
opens a detector folder, and `score_clips` scores every clip with every
detector on a few threads; the scores come back as `ModelScores`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.audio import AudioError, Channel
from service.detector import Detector, DetectorError, Score
from service.features import FeatureError
from training import dataset
from training.errors import (
    ClipError,
    DatasetError,
    MissingFolderError,
    ModelLoadError,
    NoTestDataError,
)


@dataclass(frozen=True)
class IdScores:
    """Scores of one machine ID's test clips; all three lists have length n_clips.

    `files` are the clip paths, `labels` 0 normal / 1 anomalous;
    `bin_errors`, when present, one array of per-mel-bin errors per clip
    (`service.detector.Score.bin_errors`).
    """

    files: list[str]
    labels: list[int]
    scores: list[float]
    bin_errors: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not len(self.files) == len(self.labels) == len(self.scores):
            raise ValueError(
                f"{len(self.files)} files, {len(self.labels)} labels and {len(self.scores)} scores "
                "differ in length"
            )
        if self.bin_errors is not None and len(self.bin_errors) != len(self.files):
            raise ValueError(f"{len(self.bin_errors)} bin error rows for {len(self.files)} files")


@dataclass(frozen=True)
class ModelScores:
    """What one detector said about the test clips, per machine ID.

    `ids` maps a machine ID ("00") to its clips' scores, either as `IdScores`
    or as a plain ``{"files": [...], "labels": [...], "scores": [...]}``.
    """

    model: str
    machine_type: str
    threshold: float
    ids: Mapping[str, IdScores] = field(default_factory=dict)
    # Centre frequency (Hz) of each mel bin, for the per-bin files; None when unknown.
    bin_centres_hz: Sequence[float] | None = None

    def __post_init__(self) -> None:
        converted = {mid: v if isinstance(v, IdScores) else IdScores(**v) for mid, v in self.ids.items()}
        object.__setattr__(self, "ids", dict(sorted(converted.items())))


def find_test_clips(data_root: str | Path, machine_type: str) -> dict[str, list[tuple[Path, int]]]:
    """Labelled test clips of `machine_type`, per machine ID.

    The folder is found as `training.dataset` finds it (``DATA_ROOT/<machine_type>/test/``,
    ``DATA_ROOT/test/`` or DATA_ROOT itself); of its WAV files those named
    ``normal_id_XX_*.wav`` get label 0 and ``anomaly_id_XX_*.wav`` label 1.
    Returns ``{id: [(path, label), ...]}``, IDs and paths sorted.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise MissingFolderError(f"data folder {root} does not exist")
    try:
        files = dataset.list_clips(root, machine_type=machine_type, split="test")
    except DatasetError as error:
        raise NoTestDataError(
            f"{error} (expected the DCASE layout {root}/{machine_type}/test/normal_id_XX_NNNNNNNN.wav)"
        ) from None
    clips: dict[str, list[tuple[Path, int]]] = {}
    for file in files:
        if file.label is not None:
            clips.setdefault(file.machine_id, []).append((file.path, int(file.label == "anomaly")))
    if not clips:
        folder = files[0].path.parent
        raise NoTestDataError(
            f"{folder} holds {len(files)} WAV file(s) but none named normal_id_XX_*.wav or "
            "anomaly_id_XX_*.wav; "
            "AUC needs that ground truth (the DCASE evaluation set's id_XX_*.wav clips are unlabelled)"
        )
    return dict(sorted(clips.items()))


def select_ids(
    found: Mapping[str, list[tuple[Path, int]]],
    wanted: Sequence[str],
) -> dict[str, list[tuple[Path, int]]]:
    folder = next(iter(found.values()))[0][0].parent
    missing = [mid for mid in wanted if mid not in found]
    if missing:
        raise NoTestDataError(
            f"no test clips for machine ID(s) {', '.join(missing)} in {folder}; "
            f"it has clips for {', '.join(found) or 'no IDs'} (choose IDs to evaluate with --ids)"
        )
    selected = {mid: found[mid] for mid in wanted}
    for machine_id, clips in selected.items():
        n_anomaly = sum(label for _, label in clips)
        if n_anomaly == 0 or n_anomaly == len(clips):
            missing_kind = "anomalous" if n_anomaly == 0 else "normal"
            raise NoTestDataError(
                f"machine ID {machine_id} has no {missing_kind} test clips in {folder} "
                f"({len(clips) - n_anomaly} normal, {n_anomaly} anomalous): AUC needs both"
            )
    return selected


def load_detector(model_dir: str | Path) -> Detector:
    folder = Path(model_dir)
    if not folder.is_dir():
        raise MissingFolderError(f"model folder {folder} does not exist")
    try:
        # One thread per session run: evaluation parallelises over clips instead (score_clips).
        return Detector(folder, intra_op_threads=1)
    except DetectorError as error:
        raise ModelLoadError(str(error)) from None


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def score_clips(
    detectors: Sequence[Detector],
    clips: Mapping[str, list[tuple[Path, int]]],
    *,
    channel: Channel = 0,
    progress: bool = True,
    names: Sequence[str] | None = None,
    workers: int | None = None,
) -> list[ModelScores]:
    """Score every clip with every detector, each through `Detector.score_file`.

    Clips are scored on `workers` threads (libsndfile, soxr, numpy's FFT and
    onnxruntime release the GIL, and an onnxruntime session may be run from
    several threads). Returns one `ModelScores` per detector, in the order
    given, with clips in the order of `clips`.
    """
    names = list(names) if names is not None else [d.name for d in detectors]
    jobs = [(machine_id, path, label) for machine_id, id_clips in clips.items() for path, label in id_clips]

    def score_one(job: tuple[str, Path, int]) -> list[Score]:
        machine_id, path, _ = job
        try:
            # As a request naming the clip's machine: only a fused model's score depends on it. A second
            # model decodes the file again: 0.9 ms of a 16 kHz 10 s clip's 45 ms, for one way to score.
            return [
                detector.score_file(path, channel=channel, per_bin=True, machine_id=machine_id)
                for detector in detectors
            ]
        except (AudioError, FeatureError) as error:
            raise ClipError(str(error)) from None  # its message starts with the path

    per_model: list[dict[str, dict[str, list[Any]]]] = [
        {mid: {"files": [], "labels": [], "scores": [], "bin_errors": []} for mid in clips} for _ in detectors
    ]
    bar = tqdm(total=len(jobs), unit="clip", desc=f"scoring {' + '.join(names)}", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    try:
        with bar:
            # map() yields in job order, so the lists line up with `clips` whatever the scheduling.
            for (machine_id, path, label), scores in zip(jobs, pool.map(score_one, jobs), strict=True):
                for collected, score in zip(per_model, scores, strict=True):
                    entry = collected[machine_id]
                    entry["files"].append(str(path))
                    entry["labels"].append(label)
                    entry["scores"].append(score.score)
                    entry["bin_errors"].append(score.bin_errors)
                bar.update(1)
    finally:
        # On a bad clip (or Ctrl-C) stop at once rather than scoring the clips still queued.
        pool.shutdown(wait=True, cancel_futures=True)
    return [
        ModelScores(
            model=name,
            machine_type=d.bundle.machine_type,
            threshold=d.threshold,
            ids={mid: IdScores(**entry) for mid, entry in collected.items()},
            bin_centres_hz=mel_centres_hz(d),
        )
        for name, d, collected in zip(names, detectors, per_model, strict=True)
    ]


def mel_centres_hz(detector: Detector) -> list[float]:
    """Centre (weighted mean frequency) of each of a detector's mel filters, in Hz."""
    params, basis = detector.params, detector.mel_basis
    freqs = np.arange(basis.shape[1]) * params.sample_rate / params.n_fft
    return [float(c) for c in basis @ freqs / np.maximum(basis.sum(axis=1), 1e-12)]

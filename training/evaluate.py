"""Scores of files through the exported ONNX detector, as the service computes them.

`score_files` is the training side's word on what a deployed model answers:
the service's parity test and the benchmark check their scores against it.
The evaluation report (AUC, pAUC, precision/recall/F1, CSVs, figures) is
`training.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from service.audio import Channel, read_audio
from service.detector import Detector


def score_files(
    model_dir: Path | str,
    paths: Sequence[Path | str],
    channel: Channel = 0,
    *,
    detector: Detector | None = None,
    progress: bool = False,
) -> list[float]:
    """Anomaly score of each file, in order, as the deployed service computes it.

    Raises `AudioError` (or `ClipTooShortError`) for a file that cannot be scored.
    """
    detector = Detector(Path(model_dir)) if detector is None else detector
    rate = detector.params.sample_rate
    scores = []
    for path in tqdm(paths, desc="score", unit="clip", disable=not progress):
        clip = read_audio(path, sample_rate=rate, channel=channel)
        scores.append(detector.score(clip.samples).score)
    return scores

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

from service.audio import Channel
from service.detector import Detector


def score_files(
    model_dir: Path | str,
    paths: Sequence[Path | str],
    channel: Channel = 0,
    *,
    detector: Detector | None = None,
    progress: bool = False,
) -> list[float]:
    """Anomaly score of each file, in order, as the deployed service computes it (`Detector.score_file`).

    Raises `AudioError` (`AudioTooShortError` among them), naming the file, for one that cannot be scored.
    """
    detector = Detector(Path(model_dir)) if detector is None else detector
    return [
        detector.score_file(path, channel=channel).score
        for path in tqdm(paths, desc="score", unit="clip", disable=not progress)
    ]

"""Minimal evaluation: ROC AUC and pAUC per machine ID through the exported ONNX model.

Every test clip of the model's machine type and IDs is scored by
`service.detector.Detector` (what the service runs); labels come from the
DCASE file names (`normal_*` 0, `anomaly_*` 1; unlabelled files are left
out). pAUC is `roc_auc_score(y, s, max_fpr=0.1)`, as the DCASE 2020
evaluator (scikit-learn's McClish-standardised value).

The steps are separate functions (`test_clips`, `score_files`,
`id_metrics`, `evaluate`, `format_table`, `write_report`) so reports can
grow (decisions at the threshold, CSVs, figures, comparisons) without
touching the scoring.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from service.audio import AudioError, Channel, read_audio
from service.detector import ClipTooShort, Detector, DetectorError
from training.dataset import ClipFile, DatasetError, list_clips

MAX_FPR = 0.1
REPORT_FILE = "report.json"


class EvaluationError(Exception):
    """A model or test set that cannot be evaluated; the message says why."""


@dataclass(frozen=True)
class IdResult:
    auc: float
    pauc: float
    n_normal: int
    n_anomaly: int


@dataclass
class Report:
    model: str
    machine_type: str
    ids: dict[str, IdResult]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        return {
            "auc": float(np.mean([r.auc for r in self.ids.values()])),
            "pauc": float(np.mean([r.pauc for r in self.ids.values()])),
        }

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "machine_type": self.machine_type,
            "ids": {
                k: {"auc": r.auc, "pauc": r.pauc, "n_normal": r.n_normal, "n_anomaly": r.n_anomaly}
                for k, r in self.ids.items()
            },
            "mean": self.mean,
        }


def score_files(
    model_dir: Path | str,
    paths: Sequence[Path | str],
    channel: Channel = 0,
    *,
    detector: Detector | None = None,
    progress: bool = False,
) -> list[float]:
    """Anomaly score of each file, in order, as the deployed service computes it.

    Raises `AudioError` (or `ClipTooShort`) for a file that cannot be scored.
    """
    detector = Detector(Path(model_dir)) if detector is None else detector
    rate = detector.params.sample_rate
    scores = []
    for path in tqdm(paths, desc="score", unit="clip", disable=not progress):
        clip = read_audio(path, sample_rate=rate, channel=channel)
        scores.append(detector.score(clip.samples).score)
    return scores


def test_clips(data_root: Path, *, machine_type: str, ids: Sequence[str]) -> dict[str, list[ClipFile]]:
    """Labelled test files per machine ID (only IDs the model knows)."""
    files = list_clips(data_root, machine_type=machine_type, split="test")
    by_id: dict[str, list[ClipFile]] = {i: [] for i in ids}
    for f in files:
        if f.machine_id in by_id and f.label is not None:
            by_id[f.machine_id].append(f)
    empty = [i for i, fs in by_id.items() if not fs]
    if empty:
        raise EvaluationError(f"no labelled test clips for machine ID(s) {', '.join(empty)} under {data_root}")
    return by_id


def id_metrics(labels: np.ndarray, scores: np.ndarray) -> IdResult:
    """AUC and pAUC of one ID; labels (n,) 0 normal / 1 anomalous, scores (n,)."""
    n_anomaly = int(labels.sum())
    n_normal = int(labels.size - n_anomaly)
    if n_normal == 0 or n_anomaly == 0:
        raise EvaluationError(f"AUC needs normal and anomalous clips; got {n_normal} normal, {n_anomaly} anomalous")
    return IdResult(
        auc=float(roc_auc_score(labels, scores)),
        pauc=float(roc_auc_score(labels, scores, max_fpr=MAX_FPR)),
        n_normal=n_normal,
        n_anomaly=n_anomaly,
    )


def evaluate(
    model_dir: Path | str, data_root: Path | str, *, channel: Channel = 0, progress: bool = True
) -> Report:
    """Score every labelled test clip of the model's machine type and IDs; metrics per ID."""
    try:
        detector = Detector(Path(model_dir))
    except DetectorError as error:
        raise EvaluationError(str(error)) from None
    bundle = detector.bundle
    try:
        by_id = test_clips(Path(data_root), machine_type=bundle.machine_type, ids=bundle.machine_ids)
    except DatasetError as error:
        raise EvaluationError(str(error)) from None
    report = Report(model=detector.name, machine_type=bundle.machine_type, ids={})
    total = sum(len(v) for v in by_id.values())
    with tqdm(total=total, desc="score", unit="clip", disable=not progress) as bar:
        for machine_id, files in by_id.items():
            labels, scores = [], []
            for f in files:
                try:
                    scores.append(score_files(model_dir, [f.path], channel, detector=detector)[0])
                except (AudioError, ClipTooShort) as error:
                    report.skipped.append((f.path.name, str(error)))
                    continue
                finally:
                    bar.update(1)
                labels.append(1 if f.label == "anomaly" else 0)
            report.ids[machine_id] = id_metrics(np.asarray(labels), np.asarray(scores))
    return report


def format_table(report: Report) -> str:
    rows = [f"{report.model} ({report.machine_type})", f"{'id':>6} {'AUC':>7} {'pAUC':>7} {'normal':>7} {'anomaly':>8}"]
    for machine_id, r in report.ids.items():
        rows.append(f"{machine_id:>6} {r.auc:7.4f} {r.pauc:7.4f} {r.n_normal:7d} {r.n_anomaly:8d}")
    mean = report.mean
    rows.append(f"{'mean':>6} {mean['auc']:7.4f} {mean['pauc']:7.4f}")
    if report.skipped:
        rows.append(f"skipped {len(report.skipped)} unreadable test file(s): " + ", ".join(n for n, _ in report.skipped[:10]))
    return "\n".join(rows)


def write_report(report: Report, out: Path | str) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path

"""Detection metrics of one machine ID: ROC AUC, pAUC and the decisions at a threshold.

AUC and pAUC are computed exactly as the DCASE 2020 Task 2 baseline and
evaluator compute them: `sklearn.metrics.roc_auc_score(y, s)` and
`roc_auc_score(y, s, max_fpr=0.1)`. Note that scikit-learn returns the
McClish-standardised partial AUC (0.5 for a random detector, 1.0 for a
perfect one), not the raw area under the curve up to FPR 0.1; that is the
number DCASE publishes, so it is the number a user can compare.

Conventions, chosen once and used throughout the reports:

* Label 1 is "anomalous" (the positive class), 0 is "normal".
* A clip is decided anomalous when `score > threshold`, the same strict
  comparison `service.detector.Detector.is_anomalous` makes.
* AUC is undefined when the labels hold only one class. `detection_metrics`
  raises `UndefinedMetricError` (a ValueError) rather than returning NaN or
  None, because a report with a silent hole in its mean is worse than a
  clear message about the missing test clips.
* Precision is 0 when nothing is predicted anomalous (0/0), and F1 is 0
  when precision and recall are both 0; scikit-learn's `zero_division=0`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from training.errors import UndefinedMetricError

MAX_FPR = 0.1

# Keys of `detection_metrics` that are averaged over machine IDs in a report.
MEAN_KEYS: tuple[str, ...] = ("auc", "pauc", "precision", "recall", "f1")
COUNT_KEYS: tuple[str, ...] = ("tp", "fp", "tn", "fn", "n_normal", "n_anomaly")


def _check_inputs(labels: Iterable[int], scores: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels)
    s = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.size != s.size:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.size == 0:
        raise UndefinedMetricError("no clips: metrics need at least one normal and one anomalous clip")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got {sorted(set(y.tolist()))}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y.astype(np.int64), s


def confusion_counts(labels: Iterable[int], scores: Iterable[float], threshold: float) -> dict[str, int]:
    """Confusion matrix of the decisions `score > threshold`.

    Parameters
    ----------
    labels : array-like [shape=(n,)], 0 normal / 1 anomalous
    scores : array-like [shape=(n,)], float

    Returns
    -------
    dict with int values ``tp``, ``fp``, ``tn``, ``fn``.
    """
    y, s = _check_inputs(labels, scores)
    predicted = s > threshold
    actual = y == 1
    return {
        "tp": int(np.sum(predicted & actual)),
        "fp": int(np.sum(predicted & ~actual)),
        "tn": int(np.sum(~predicted & ~actual)),
        "fn": int(np.sum(~predicted & actual)),
    }


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of the anomalous class from confusion counts.

    0/0 gives 0 (no predicted positives → precision 0; no actual positives →
    recall 0; precision = recall = 0 → F1 0).
    """
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return float(precision), float(recall), float(f1)


def detection_metrics(
    labels: Iterable[int], scores: Iterable[float], threshold: float, *, max_fpr: float = MAX_FPR
) -> dict[str, float | int]:
    """Ranking and decision quality of one machine ID's test clips.

    Parameters
    ----------
    labels : array-like [shape=(n,)], 0 normal / 1 anomalous
    scores : array-like [shape=(n,)], float
        Anomaly scores; higher means more anomalous.
    threshold : float
        A clip is decided anomalous when its score is strictly above it.
    max_fpr : float
        Upper FPR limit of the partial AUC; DCASE 2020 uses 0.1.

    Returns
    -------
    dict
        ``auc``, ``pauc``, ``precision``, ``recall``, ``f1`` (floats in [0, 1]);
        ``tp``, ``fp``, ``tn``, ``fn``, ``n_normal``, ``n_anomaly`` (ints).

    Raises
    ------
    UndefinedMetricError
        When the labels hold only normal or only anomalous clips.
    ValueError
        On mismatched lengths, labels other than 0/1, or non-finite scores.
    """
    y, s = _check_inputs(labels, scores)
    n_anomaly = int(y.sum())
    n_normal = int(y.size - n_anomaly)
    if n_anomaly == 0 or n_normal == 0:
        missing = "anomalous" if n_anomaly == 0 else "normal"
        raise UndefinedMetricError(
            f"AUC is undefined without {missing} clips ({n_normal} normal, {n_anomaly} anomalous)"
        )
    counts = confusion_counts(y, s, threshold)
    precision, recall, f1 = precision_recall_f1(counts["tp"], counts["fp"], counts["fn"])
    return {
        "auc": float(roc_auc_score(y, s)),
        "pauc": float(roc_auc_score(y, s, max_fpr=max_fpr)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        **counts,
        "n_normal": n_normal,
        "n_anomaly": n_anomaly,
    }


def mean_metrics(
    per_id: Mapping[str, Mapping[str, float | int]] | Sequence[Mapping[str, float | int]],
) -> dict[str, float]:
    """Arithmetic mean over machine IDs of AUC, pAUC, precision, recall and F1.

    DCASE averages per ID (each ID counts once, however many clips it has),
    so the mean here is the macro average, not the metrics of pooled clips.
    """
    rows = list(per_id.values()) if isinstance(per_id, Mapping) else list(per_id)
    if not rows:
        raise ValueError("no machine IDs to average")
    return {key: float(np.mean([row[key] for row in rows])) for key in MEAN_KEYS}


def total_counts(per_id: Mapping[str, Mapping[str, float | int]]) -> dict[str, int]:
    """Confusion counts and clip numbers summed over machine IDs (pooled)."""
    return {key: int(sum(int(row[key]) for row in per_id.values())) for key in COUNT_KEYS}

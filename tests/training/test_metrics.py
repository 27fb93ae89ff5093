import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.errors import UndefinedMetricError
from training.metrics import (
    confusion_counts,
    detection_metrics,
    mean_metrics,
    precision_recall_f1,
    total_counts,
)

# Five normal clips, five anomalous ones; one normal clip (score 10) outranks every anomaly.
LABELS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
SCORES = [1.0, 2.0, 3.0, 4.0, 10.0, 5.0, 6.0, 7.0, 8.0, 9.0]


def test_auc_and_pauc_equal_sklearn_and_hand_values():
    m = detection_metrics(LABELS, SCORES, threshold=6.5)
    assert m["auc"] == roc_auc_score(LABELS, SCORES)
    assert m["pauc"] == roc_auc_score(LABELS, SCORES, max_fpr=0.1)
    # Each anomaly outranks 4 of the 5 normal clips: 20 of 25 pairs.
    assert m["auc"] == pytest.approx(0.8)
    # Up to FPR 0.1 the curve is at TPR 0 (the top score is a normal clip), so the
    # raw partial area is 0; McClish: 0.5 * (1 + (0 - 0.005) / (0.1 - 0.005)) = 9/19.
    assert m["pauc"] == pytest.approx(9 / 19)
    assert m["pauc"] < m["auc"] - 0.3


def test_pauc_equals_auc_for_a_perfect_ranking():
    m = detection_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], threshold=0.5)
    assert m["auc"] == m["pauc"] == 1.0


def test_max_fpr_is_passed_to_sklearn():
    m = detection_metrics(LABELS, SCORES, threshold=6.5, max_fpr=0.5)
    assert m["pauc"] == roc_auc_score(LABELS, SCORES, max_fpr=0.5)


def test_decisions_match_a_hand_computed_confusion_matrix():
    # score > 6.5: anomalies 7, 8, 9 (TP) and the normal 10 (FP); anomalies 5, 6 are missed.
    m = detection_metrics(LABELS, SCORES, threshold=6.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 4, 2)
    assert (m["n_normal"], m["n_anomaly"]) == (5, 5)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))  # 0.6667
    assert m["f1"] == pytest.approx(2 / 3)


def test_a_score_equal_to_the_threshold_is_normal():
    # The service's rule is score > threshold, strictly.
    assert confusion_counts([0, 1], [2.0, 2.0], 2.0) == {"tp": 0, "fp": 0, "tn": 1, "fn": 1}
    assert confusion_counts([0, 1], [2.0, 2.0], 1.999) == {"tp": 1, "fp": 1, "tn": 0, "fn": 0}


def test_no_predicted_positives_gives_precision_zero():
    m = detection_metrics(LABELS, SCORES, threshold=100.0)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 5, 5)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)


def test_everything_predicted_anomalous():
    m = detection_metrics(LABELS, SCORES, threshold=0.0)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (5, 5, 0, 0)
    assert m["precision"] == 0.5 and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1]])
def test_one_class_only_raises_a_clear_error(labels):
    with pytest.raises(UndefinedMetricError, match="AUC is undefined without"):
        detection_metrics(labels, [0.5] * len(labels), threshold=0.1)
    # It is a ValueError, so generic callers can catch it as bad input.
    assert issubclass(UndefinedMetricError, ValueError)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1], [0.1], "2 labels but 1 scores"),
        ([0, 2], [0.1, 0.2], "labels must be 0"),
        ([0, 1], [0.1, math.nan], "NaN or infinite"),
        ([], [], "no clips"),
    ],
)
def test_invalid_inputs_are_refused(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        detection_metrics(labels, scores, threshold=0.0)


def test_numpy_inputs_and_plain_python_types_out():
    m = detection_metrics(np.array(LABELS), np.array(SCORES, dtype=np.float32), threshold=6.5)
    assert all(type(m[k]) is float for k in ("auc", "pauc", "precision", "recall", "f1"))
    assert all(type(m[k]) is int for k in ("tp", "fp", "tn", "fn", "n_normal", "n_anomaly"))


def test_mean_is_the_average_over_ids_and_counts_sum():
    a = detection_metrics(LABELS, SCORES, threshold=6.5)
    b = detection_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], threshold=0.5)
    mean = mean_metrics({"00": a, "02": b})
    assert set(mean) == {"auc", "pauc", "precision", "recall", "f1"}
    assert mean["auc"] == pytest.approx((0.8 + 1.0) / 2)
    assert mean["precision"] == pytest.approx((0.75 + 1.0) / 2)
    assert total_counts({"00": a, "02": b}) == {
        "tp": 5,
        "fp": 1,
        "tn": 6,
        "fn": 2,
        "n_normal": 7,
        "n_anomaly": 7,
    }
    with pytest.raises(ValueError, match="no machine IDs"):
        mean_metrics({})

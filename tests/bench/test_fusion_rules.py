"""bench.fusion_rules: today's rule reproduces the detector's own scores; bad work folders are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.fusion_rules import RULES, main, study
from service.detector import Detector
from tests.training.tiny_detector import clip, make_detector, two_id_fused_scoring, write_test_set
from training.clip_scores import find_test_clips
from training.metrics import detection_metrics


def test_the_folders_own_rule_is_the_detectors_own_score(tmp_path: Path) -> None:
    probe = Detector(make_detector(tmp_path / "probe")).score(clip(seed=0, anomalous=False))
    assert probe.band_db is not None
    folder = make_detector(
        tmp_path / "work" / "fits" / "size" / "toy" / "cae_fit0",
        scoring=two_id_fused_scoring(probe.score, probe.band_db),
    )
    data_root = write_test_set(tmp_path / "work" / "data" / "size" / "toy", n_normal=3, n_anomaly=3)
    result = study(folder, data_root)
    assert set(result) == set(RULES)

    detector = Detector(folder)
    own = []
    for machine_id, clips in find_test_clips(data_root, "slider").items():
        scores = [detector.score_file(path, machine_id=machine_id).score for path, _ in clips]
        metrics = detection_metrics([label for _, label in clips], scores, threshold=float("inf"))
        own.append(float(metrics["auc"]))
    assert result["the folder's own"]["auc"] == pytest.approx(np.mean(own))
    assert result["mean"] == result["the folder's own"]  # the folder fuses by the mean
    assert main([str(tmp_path / "work")]) == 0


def test_a_work_folder_without_fused_fits_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no fitted cae folders" in capsys.readouterr().err

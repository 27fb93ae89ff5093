"""`bench.calibration` counts fresh normal clips above each threshold as the service scores them.

A fused detector's score depends on the machine ID (its envelope Gaussian and
standardisation), so the clips must meet their ID's own threshold scored with
that ID, and the model-wide threshold scored without one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.calibration import fresh_rates
from service.detector import Detector
from tests.training.tiny_detector import clip, make_detector, two_id_fused_scoring, write_test_set
from training.clip_scores import find_test_clips


def test_each_id_meets_its_own_threshold_scored_with_its_id(tmp_path: Path) -> None:
    probe = Detector(make_detector(tmp_path / "probe")).score(clip(seed=0, anomalous=False))
    assert probe.band_db is not None
    scoring = two_id_fused_scoring(probe.score, probe.band_db)
    clips = find_test_clips(write_test_set(tmp_path / "data", n_normal=4, n_anomaly=0), "slider")
    paths = [path for id_clips in clips.values() for path, _ in id_clips]
    ids = [mid for mid, id_clips in clips.items() for _ in id_clips]
    first = Detector(make_detector(tmp_path / "first", scoring=scoring))
    by_id = np.array([first.score_file(p, machine_id=m).score for p, m in zip(paths, ids, strict=True)])
    wide = np.array([first.score_file(p).score for p in paths])
    mine = np.asarray(ids) == "02"
    # ID 02's clips score higher with their ID's entry: a threshold between the two splits them.
    assert wide[mine].max() < by_id[mine].min()
    between = float((wide[mine].max() + by_id[mine].min()) / 2)
    detector = Detector(
        make_detector(tmp_path / "fused", scoring=scoring, threshold=between, per_id={"02": between})
    )

    own, model_wide, interval = fresh_rates(detector, paths, ids)

    assert own["02"] == 1.0  # scored without the ID it would be 0.0
    assert model_wide["02"] == 0.0
    assert set(own) == set(model_wide) == set(interval) == {"00", "02"}
    expected_00 = float(np.mean(by_id[~mine] > between))
    assert own["00"] == pytest.approx(expected_00)

"""Calibration with few clips: k-fold cross-fitting, per-ID thresholds, the input fingerprint."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from service.bundle import Bundle
from service.detector import Detector
from training.crossfit import assign_folds, choose_calibration
from training.dataset import ClipFile, FeatureClip
from training.export import score_paths
from training.fit import run_fit
from training.fit_options import FitOptions
from training.fit_summary import FitSummary
from training.model import CaeConfig
from training.synth import generate_dataset
from training.threshold import calibrate

IDS = ("00", "02")
CLIPS = {"00": 10, "02": 12}


@pytest.fixture(scope="module")
def cross_fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FitSummary, Path, str]:
    """A tiny plain CAE cross-fitted (2 folds) on 10 clips of ID 00 and 12 of ID 02, the fewest `fit` takes."""
    root = tmp_path_factory.mktemp("few")
    generate_dataset(
        root, ids=IDS, n_train=max(CLIPS.values()), n_test_normal=0, n_test_anomaly=0, seed=4, duration=2.0
    )
    train = root / "slider" / "train"
    for extra in range(CLIPS["00"], max(CLIPS.values())):
        (train / f"normal_id_00_{extra:08d}.wav").unlink()
    options = FitOptions(
        frames=16,
        patch_hop=8,
        epochs=2,
        batch_size=32,
        seed=5,
        folds=2,
        cae=CaeConfig(filters=(4, 8), bottleneck=4),
        scorer="cae",  # the CAE's cross-fit alone; test_fused_fit.py fuses the envelope scorer
        progress=False,
    )
    out = tmp_path_factory.mktemp("models") / "few"
    stream = io.StringIO()
    summary = run_fit(root, out, options, stream=stream)
    return summary, out, stream.getvalue()


def test_auto_cross_fits_small_data_and_holds_out_large() -> None:
    options = FitOptions()
    assert choose_calibration(options, {"00": 10, "02": 249}) == "cross-fit"
    assert choose_calibration(options, {"00": 250, "02": 300}) == "holdout"
    assert choose_calibration(FitOptions(calibration="holdout"), {"00": 10}) == "holdout"


def test_folds_deal_each_id_round_every_fold() -> None:
    clips = [
        FeatureClip(
            file=ClipFile(path=Path(f"{mid}-{i}.wav"), machine_id=mid, label="normal"),
            spec=np.zeros((1, 1)),
            seconds=1.0,
        )
        for mid, n in (("00", 10), ("02", 7), ("04", 3))
        for i in range(n)
    ]
    fold = assign_folds(clips, folds=3, seed=0)
    assert fold.shape == (20,) and set(fold.tolist()) == {0, 1, 2}
    for mid in ("00", "02", "04"):
        counts = Counter(int(f) for f, c in zip(fold, clips, strict=True) if c.file.machine_id == mid)
        assert max(counts.values()) - min(counts.values(), default=0) <= 1 and len(counts) == min(
            3, len(counts)
        )
    # Fold sizes stay balanced across IDs, not only within each.
    assert max(Counter(fold.tolist()).values()) - min(Counter(fold.tolist()).values()) <= 1
    np.testing.assert_array_equal(fold, assign_folds(clips, folds=3, seed=0))
    assert not np.array_equal(fold, assign_folds(clips, folds=3, seed=1))


def test_every_clip_calibrates_through_a_model_that_did_not_train_on_it(cross_fitted) -> None:
    summary, out, _ = cross_fitted
    threshold = Bundle.read(out).threshold
    assert threshold.scores_from == "cross_fit" and threshold.folds == 2
    assert threshold.n_calibration_clips == sum(CLIPS.values()) == summary.calibration_scores.size
    assert threshold.value == pytest.approx(
        calibrate(summary.calibration_scores, quantile=0.9).value, rel=1e-9
    )
    training = Bundle.read(out).training
    assert training.fold_best_epochs is not None and len(training.fold_best_epochs) == 2
    # As many optimiser steps as the median fold took: on all clips that is at most as many epochs.
    assert 1 <= training.epochs_run <= max(training.fold_best_epochs)
    assert training.n_clips == sum(CLIPS.values()) and training.n_validation_clips == 0


def test_each_id_gets_its_own_threshold_from_its_own_scores(cross_fitted) -> None:
    summary, out, text = cross_fitted
    threshold = Bundle.read(out).threshold
    assert threshold.per_id is not None and sorted(threshold.per_id) == list(IDS)
    ids = np.asarray(summary.calibration_ids)
    for mid, n in CLIPS.items():
        fit = threshold.per_id[mid]
        assert fit.n_calibration_clips == n
        assert fit.value == pytest.approx(calibrate(summary.calibration_scores[ids == mid]).value, rel=1e-9)
        lo, hi = fit.false_alarm_interval
        assert 0.0 <= lo <= 0.1 <= hi <= 1.0
        assert fit.clips_for_3_points is not None and fit.clips_for_3_points > n
        assert fit.curve is not None and fit.curve.threshold_for(0.1) == pytest.approx(fit.value, rel=1e-3)
    # The summary says how precise each ID's calibration is, next to the model-wide threshold's rate.
    assert "2-fold cross-fit" in text
    for mid in IDS:
        row = next(line for line in text.splitlines() if line.split()[:1] == [mid])
        assert f"{threshold.per_id[mid].value:.6g}" in row and str(CLIPS[mid]) in row
    assert "more clips would narrow it to +/- 3 points" in text


def test_calibration_scores_are_out_of_fold_not_the_final_models(cross_fitted, tmp_path: Path) -> None:
    summary, out, _ = cross_fitted
    bundle = Bundle.read(out)
    root = Path(bundle.training.data_root) / "slider" / "train"
    paths = sorted(root.glob("*.wav"))
    in_sample = score_paths(Detector(out), paths)
    assert in_sample.shape == summary.calibration_scores.shape
    assert not np.allclose(np.sort(in_sample), np.sort(summary.calibration_scores), rtol=1e-3)


def test_the_bundle_carries_the_training_audio_fingerprint(cross_fitted) -> None:
    _, out, _ = cross_fitted
    fingerprint = Bundle.read(out).fingerprint
    assert fingerprint is not None and fingerprint.n_clips == sum(CLIPS.values())
    assert fingerprint.per_id is not None and {k: v.n_clips for k, v in fingerprint.per_id.items()} == CLIPS
    assert len(fingerprint.band_db) == 128


def test_out_of_fold_scores_are_put_on_the_final_models_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold model f scores everything f points higher; the calibration scores must not inherit that."""
    import training.crossfit as crossfit_module
    from training.fusion import RawScores

    clips = [
        FeatureClip(
            file=ClipFile(path=Path(f"normal_id_{mid}_{i:08d}.wav"), machine_id=mid, label="normal"),
            spec=np.full((128, 40), float(i % 5)),
            seconds=1.0,
        )
        for mid in IDS
        for i in range(10)
    ]
    gap = {path: 0.01 * (i % 5) for i, path in enumerate(c.file.path for c in clips)}  # each clip's own
    calls = iter(range(100))

    def fake_train(x_train, x_val, options, **kwargs):
        return next(calls), {"loss": [1.0], "val_loss": [1.0] if x_val is not None else []}

    def fake_raw(model, candidate, paths, **kwargs):
        # A held-out clip scores 0.5 above a training clip: the generalisation gap calibration must keep.
        held = len(paths) - 8 * 2  # folds of 2 per ID, 2 IDs: 16 training clips per fold
        cae = np.array([10.0 * model + gap[p] + (0.5 if k < held else 0.0) for k, p in enumerate(paths)])
        return RawScores(cae=cae, envelope_own=None, envelope_wide=None)

    def fake_score(model, candidate, paths, **kwargs):
        return np.array([100.0 + gap[p] for p in paths])

    monkeypatch.setattr(crossfit_module, "train_keras", fake_train)
    monkeypatch.setattr(crossfit_module, "raw_scores_with_model", fake_raw)
    monkeypatch.setattr(crossfit_module, "score_with_model", fake_score)
    options = FitOptions(frames=16, patch_hop=8, folds=5, scorer="cae", progress=False).resolved()
    trained = crossfit_module.fit_cross(clips, options, io.StringIO(), data_root="x")
    scores = trained.calibration.scores
    expected = np.array([100.0 + gap[c.file.path] + 0.5 for c in clips])
    # Without the alignment the scores would spread over 0..40 with the fold models' levels.
    np.testing.assert_allclose(scores - np.median(scores), expected - np.median(expected), atol=0.011)
    assert abs(np.median(scores) - np.median(expected)) < 0.02

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from training import threshold as threshold_module
from training.errors import ThresholdError
from training.threshold import calibrate, fit_gamma_threshold, quantile_for


def test_threshold_is_near_the_true_gamma_quantile() -> None:
    rng = np.random.default_rng(0)
    scores = stats.gamma.rvs(4.0, loc=0.2, scale=0.05, size=4000, random_state=rng)
    fit = fit_gamma_threshold(scores, quantile=0.9)
    truth = stats.gamma.ppf(0.9, 4.0, loc=0.2, scale=0.05)
    assert fit.value == pytest.approx(truth, rel=0.02)
    assert fit.method_note == "mle"
    assert fit.empirical_false_alarm_rate == pytest.approx(0.1, abs=0.02)
    assert fit.empirical_false_alarm_rate == np.mean(scores > fit.value)
    assert fit.n_clips == 4000 and fit.target_false_alarm_rate == pytest.approx(0.1)
    assert stats.gamma.ppf(0.9, fit.shape, loc=fit.loc, scale=fit.scale) == pytest.approx(fit.value)


def test_false_alarm_rate_sets_the_quantile() -> None:
    assert quantile_for(None) == 0.9
    assert quantile_for(0.01) == pytest.approx(0.99)
    scores = stats.gamma.rvs(3.0, scale=1.0, size=2000, random_state=np.random.default_rng(1))
    strict = fit_gamma_threshold(scores, quantile=quantile_for(0.01))
    loose = fit_gamma_threshold(scores, quantile=quantile_for(0.2))
    assert strict.value > loose.value
    assert strict.empirical_false_alarm_rate < loose.empirical_false_alarm_rate
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ThresholdError, match="false-alarm rate"):
            quantile_for(bad)


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([0.5, 0.6], "at least 3"),
        ([0.7, 0.7, 0.7, 0.7], "all 4 calibration scores are equal"),
        ([0.5, np.nan, 0.6, 0.7], "NaN or infinite"),
        ([0.5, np.inf, 0.6, 0.7], "NaN or infinite"),
    ],
)
def test_degenerate_scores_are_refused(scores: list[float], message: str) -> None:
    with pytest.raises(ThresholdError, match=message):
        fit_gamma_threshold(scores)


def test_failed_mle_falls_back_to_moments(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fit(*args: object, **kwargs: object) -> tuple[float, float, float]:
        return (float("nan"), 0.0, 1.0)

    monkeypatch.setattr(threshold_module.stats.gamma, "fit", broken_fit)
    scores = np.array([1.0, 1.2, 0.9, 1.1, 1.3, 0.8])
    fit = fit_gamma_threshold(scores)
    mean, var = scores.mean(), scores.var(ddof=1)
    assert fit.method_note.startswith("moments")
    assert (fit.shape, fit.loc, fit.scale) == pytest.approx((mean**2 / var, 0.0, var / mean))
    assert np.isfinite(fit.value) and fit.value > mean


def test_small_samples_still_give_a_finite_threshold() -> None:
    fit = fit_gamma_threshold([0.31, 0.35, 0.29])
    assert np.isfinite(fit.value) and fit.value > 0.29


def test_few_scores_fix_the_location_at_zero() -> None:
    scores = stats.gamma.rvs(50.0, loc=0.25, scale=0.001, size=12, random_state=np.random.default_rng(2))
    small = fit_gamma_threshold(scores)
    assert small.loc == 0.0 and small.method_note == "mle, loc 0"
    assert scores.max() > small.value > np.median(scores)
    many = stats.gamma.rvs(
        50.0,
        loc=0.25,
        scale=0.001,
        size=threshold_module.FREE_LOC_MIN_CLIPS,
        random_state=np.random.default_rng(2),
    )
    assert fit_gamma_threshold(many).method_note == "mle"


def test_calibrate_reports_how_precise_the_threshold_is() -> None:
    rng = np.random.default_rng(3)
    few = calibrate(stats.gamma.rvs(6.0, loc=0.3, scale=0.01, size=20, random_state=rng), rounds=100)
    more = calibrate(stats.gamma.rvs(6.0, loc=0.3, scale=0.01, size=400, random_state=rng), rounds=100)
    for fit in (few, more):
        lo, hi = fit.false_alarm_interval
        assert 0.0 <= lo < 0.1 < hi <= 1.0
        assert fit.clips_for_3_points >= fit.n_calibration_clips
    # Twenty times the clips: a far narrower interval, and fewer clips still to record.
    width = lambda f: f.false_alarm_interval[1] - f.false_alarm_interval[0]  # noqa: E731
    assert width(more) < width(few) / 2.5
    assert (
        more.clips_for_3_points - more.n_calibration_clips < few.clips_for_3_points - few.n_calibration_clips
    )
    # Same scores and seed: the same interval.
    again = calibrate(
        stats.gamma.rvs(6.0, loc=0.3, scale=0.01, size=20, random_state=np.random.default_rng(3)), rounds=100
    )
    assert again.false_alarm_interval == few.false_alarm_interval


def test_the_stored_curve_gives_the_fits_threshold_for_any_rate() -> None:
    scores = stats.gamma.rvs(4.0, loc=0.2, scale=0.05, size=300, random_state=np.random.default_rng(4))
    fit = calibrate(scores, rounds=10)
    g = fit.gamma
    for rate in (1e-5, 1e-3, 0.01, 0.05, 0.1, 0.123, 0.3, 0.5, 0.9, 1 - 1e-5):
        exact = stats.gamma.ppf(1 - rate, g.shape, loc=g.loc, scale=g.scale)
        assert fit.threshold_for(rate) == pytest.approx(exact, rel=2e-4)
    assert fit.threshold_for(None) == fit.value
    assert fit.curve.threshold_for(0.1) == pytest.approx(fit.value, rel=2e-4)
    for outside in (1e-6, 1 - 1e-6):
        with pytest.raises(ValueError, match="outside the calibrated range"):
            fit.threshold_for(outside)
    values = np.asarray(fit.curve.values)
    assert np.all(np.diff(values) <= 0)


def test_a_degenerate_free_location_fit_is_replaced() -> None:
    # Thirty real validation scores whose three-parameter MLE runs to shape 0.18 with the
    # location at the smallest score: its 0.9 quantile (1.12) lay beyond every score.
    scores = np.array([
        0.2781, 0.2820, 0.2823, 0.2828, 0.2842, 0.2848, 0.2859, 0.2864, 0.2866, 0.2882, 0.2889, 0.2889,
        0.2889, 0.2892, 0.2893, 0.2896, 0.2897, 0.2905, 0.2907, 0.2908, 0.2911, 0.2913, 0.2915, 0.2918,
        0.2929, 0.2958, 0.2969, 0.3005, 0.3089, 0.3251,
    ])  # fmt: skip
    free = stats.gamma.fit(scores)
    assert free[0] < 1.0  # the degeneracy this guards against
    fit = fit_gamma_threshold(scores)
    assert fit.loc == 0.0 and "degenerate" in fit.method_note
    assert np.median(scores) < fit.value < scores.max()
    assert 0.0 < fit.empirical_false_alarm_rate < 0.2

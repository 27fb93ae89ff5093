"""The decision threshold: a quantile of a gamma distribution fitted to normal scores.

As the DCASE 2020/2021 baselines do, the anomaly scores of normal clips the
model never took a gradient step on are modelled with a gamma distribution
(`scipy.stats.gamma.fit`, shape, location and scale all free), and the
threshold is its q-quantile, so about a fraction 1 - q of normal clips
raise an alarm. q = 0.9 by default. Below `FREE_LOC_MIN_CLIPS` scores the
location is fixed at 0: three free parameters on a first recording session's
ten clips swing the tail (and the threshold) from one clip to the next.

`calibrate` adds what an operator needs to trust the number
(`service.bundle.ThresholdFit`): a bootstrap interval of the false-alarm
rate the threshold will have on new normal clips (refit on resampled
scores, each refit's threshold judged by the full fit), the clips needed
for +/- 3 points, and the fit's threshold on a grid of other rates
(`FalseAlarmCurve`), since the service has no scipy.

Degenerate inputs are refused or handled, never turned into NaN:

* fewer than `MIN_CALIBRATION_CLIPS` scores, a non-finite score, or scores
  that are all the same: `ThresholdError`;
* a maximum-likelihood fit that fails or gives non-finite parameters
  (scipy's three-parameter fit is fragile on small or near-normal
  samples): documented fallback to the method of moments with location 0,
  `shape = mean**2 / var`, `scale = var / mean` (needs a positive mean,
  which mean squared errors have). `GammaThreshold.method_note` says which
  was used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from service.bundle import FalseAlarmCurve, GammaFit, ThresholdFit
from training.errors import ThresholdError

DEFAULT_QUANTILE = 0.9
MIN_CALIBRATION_CLIPS = 3
# Fewer calibration clips of an ID than this and it uses the model-wide threshold.
MIN_ID_CLIPS = 10
FREE_LOC_MIN_CLIPS = 30
BOOTSTRAP_ROUNDS = 200
INTERVAL = (0.05, 0.95)
TARGET_HALF_WIDTH = 0.03
# Logit-spaced false-alarm rates of the stored curve: 1e-5 ... 1 - 1e-5.
CURVE_RATES = 1.0 / (1.0 + np.exp(-np.linspace(-np.log(1e5 - 1), np.log(1e5 - 1), 121)))


@dataclass(frozen=True)
class GammaThreshold:
    value: float
    quantile: float
    shape: float
    loc: float
    scale: float
    n_clips: int
    empirical_false_alarm_rate: float  # fraction of the calibration scores above `value`
    method_note: str  # "mle" or "moments (mle failed: ...)"

    @property
    def target_false_alarm_rate(self) -> float:
        return 1.0 - self.quantile


def quantile_for(false_alarm_rate: float | None) -> float:
    """q = 1 - R for a target false-alarm rate R in (0, 1); None gives the default 0.9."""
    if false_alarm_rate is None:
        return DEFAULT_QUANTILE
    if not 0.0 < false_alarm_rate < 1.0:
        raise ThresholdError(
            f"the false-alarm rate must be between 0 and 1 (exclusive), got {false_alarm_rate}"
        )
    return 1.0 - false_alarm_rate


def fit_gamma_threshold(
    scores: Sequence[float] | np.ndarray, *, quantile: float = DEFAULT_QUANTILE
) -> GammaThreshold:
    """Fit a gamma to `scores` (shape (n,), normal clips) and return its `quantile`."""
    if not 0.0 < quantile < 1.0:
        raise ThresholdError(f"quantile must be in (0, 1), got {quantile}")
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size < MIN_CALIBRATION_CLIPS:
        raise ThresholdError(
            f"{x.size} calibration score(s); at least {MIN_CALIBRATION_CLIPS} held-out normal clips are "
            "needed to fit a threshold (add training clips or raise --val-fraction)"
        )
    if not np.isfinite(x).all():
        raise ThresholdError("a calibration score is NaN or infinite")
    spread = float(np.ptp(x))
    if spread <= 1e-12 * max(float(np.abs(x).max()), 1e-30):
        raise ThresholdError(
            f"all {x.size} calibration scores are equal ({x[0]:.6g}); no distribution to fit"
        )

    (shape, loc, scale), note = _fit(x)
    value = float(stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    if not np.isfinite(value):
        raise ThresholdError(
            f"the gamma fit (shape={shape:g}, loc={loc:g}, scale={scale:g}) has no finite quantile"
        )
    far = float(np.mean(x > value))
    return GammaThreshold(
        value=value,
        quantile=quantile,
        shape=shape,
        loc=loc,
        scale=scale,
        n_clips=int(x.size),
        empirical_false_alarm_rate=far,
        method_note=note,
    )


def _fit(
    x: np.ndarray, *, start: tuple[float, float, float] | None = None
) -> tuple[tuple[float, float, float], str]:
    """Gamma parameters of `x` and how they were found (the rules of the module docstring).

    A free location with shape <= 1 is the three-parameter fit's known
    degeneracy: the likelihood grows without bound as the location nears the
    smallest score, and the tail it leaves can put the threshold far beyond
    every score. Reconstruction errors are not J-shaped, so such a fit is
    replaced by the fit with location 0.
    """
    if x.size >= FREE_LOC_MIN_CLIPS:
        params = _mle(x, free_loc=True, start=start)
        if not isinstance(params, str) and params[0] > 1.0:
            return params, "mle"
        note = "mle, loc 0 (the free-location fit was degenerate)"
    else:
        note = "mle, loc 0"
    params = _mle(x, free_loc=False)
    if isinstance(params, str):
        return _moments(x), f"moments (mle failed: {params})"
    return params, note


def _mle(
    x: np.ndarray, *, free_loc: bool = True, start: tuple[float, float, float] | None = None
) -> tuple[float, float, float] | str:
    """Maximum likelihood fit (location free or 0), or the reason it is unusable."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # scipy warns while its optimiser explores bad regions; the result is checked below.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            if not free_loc:
                fitted = stats.gamma.fit(x, floc=0.0)
            elif start is not None:
                fitted = stats.gamma.fit(x, start[0], loc=start[1], scale=start[2])
            else:
                fitted = stats.gamma.fit(x)
            shape, loc, scale = (float(v) for v in fitted)
        except (ValueError, RuntimeError, FloatingPointError) as error:
            return str(error) or type(error).__name__
    if not (np.isfinite([shape, loc, scale]).all() and shape > 0 and scale > 0):
        return f"non-finite or non-positive parameters ({shape}, {loc}, {scale})"
    return shape, loc, scale


def _moments(x: np.ndarray) -> tuple[float, float, float]:
    mean = float(x.mean())
    var = float(x.var(ddof=1))
    if mean <= 0 or var <= 0:
        raise ThresholdError(f"cannot fit a gamma to scores with mean {mean:g} and variance {var:g}")
    return mean * mean / var, 0.0, var / mean


def calibrate(
    scores: Sequence[float] | np.ndarray,
    *,
    quantile: float = DEFAULT_QUANTILE,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> ThresholdFit:
    """The threshold of `scores` (normal clips' scores) with its precision, as threshold.json stores it."""
    fit = fit_gamma_threshold(scores, quantile=quantile)
    x = np.asarray(scores, dtype=np.float64).ravel()
    lo, hi = far_interval(x, fit, rounds=rounds, seed=seed)
    half = (hi - lo) / 2
    needed = int(np.ceil(x.size * (half / TARGET_HALF_WIDTH) ** 2)) if half > 0 else x.size
    return ThresholdFit(
        value=fit.value,
        quantile=fit.quantile,
        gamma=GammaFit(shape=fit.shape, loc=fit.loc, scale=fit.scale),
        n_calibration_clips=fit.n_clips,
        empirical_false_alarm_rate=fit.empirical_false_alarm_rate,
        false_alarm_interval=(lo, hi),
        clips_for_3_points=max(needed, x.size),
        curve=curve_of(fit),
    )


def far_interval(x: np.ndarray, fit: GammaThreshold, *, rounds: int, seed: int) -> tuple[float, float]:
    """`INTERVAL` bootstrap bounds of the false-alarm rate that `fit`'s procedure gives.

    Each round refits the threshold on scores drawn with replacement; the
    full fit's survival function at that threshold is the false-alarm rate
    it would have had. Rounds whose resample cannot be fitted are dropped.
    """
    rng = np.random.default_rng(seed)
    start = (fit.shape, fit.loc, fit.scale) if fit.method_note == "mle" else None
    rates = []
    for _ in range(rounds):
        sample = rng.choice(x, size=x.size, replace=True)
        if np.ptp(sample) <= 0:
            continue
        try:
            params, _ = _fit(sample, start=start)
        except ThresholdError:
            continue
        value = stats.gamma.ppf(fit.quantile, params[0], loc=params[1], scale=params[2])
        if np.isfinite(value):
            rates.append(float(stats.gamma.sf(value, fit.shape, loc=fit.loc, scale=fit.scale)))
    if not rates:
        target = 1.0 - fit.quantile
        return target, target
    lo, hi = np.quantile(rates, INTERVAL)
    return float(lo), float(hi)


def curve_of(fit: GammaThreshold) -> FalseAlarmCurve:
    """The fit's threshold at each of `CURVE_RATES`."""
    values = stats.gamma.ppf(1.0 - CURVE_RATES, fit.shape, loc=fit.loc, scale=fit.scale)
    # ppf can round to equal values far in a tail; the curve must not rise with the rate.
    values = np.minimum.accumulate(values)
    return FalseAlarmCurve(rates=CURVE_RATES.tolist(), values=values.tolist())

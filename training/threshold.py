"""The decision threshold: a quantile of a gamma distribution fitted to normal scores.

As the DCASE 2020/2021 baselines do, the anomaly scores of normal clips the
model never took a gradient step on are modelled with a gamma distribution
(`scipy.stats.gamma.fit`, shape, location and scale all free), and the
threshold is its q-quantile, so about a fraction 1 - q of normal clips
raise an alarm. q = 0.9 by default.

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

DEFAULT_QUANTILE = 0.9
MIN_CALIBRATION_CLIPS = 3


class ThresholdError(ValueError):
    """Scores that no threshold can honestly be fitted to."""


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
        raise ThresholdError(f"the false-alarm rate must be between 0 and 1 (exclusive), got {false_alarm_rate}")
    return 1.0 - false_alarm_rate


def fit_gamma_threshold(scores: Sequence[float] | np.ndarray, *, quantile: float = DEFAULT_QUANTILE) -> GammaThreshold:
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
        raise ThresholdError(f"all {x.size} calibration scores are equal ({x[0]:.6g}); no distribution to fit")

    note = "mle"
    params = _mle(x)
    if isinstance(params, str):
        note = f"moments (mle failed: {params})"
        params = _moments(x)
    shape, loc, scale = params
    value = float(stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    if not np.isfinite(value):
        raise ThresholdError(f"the gamma fit (shape={shape:g}, loc={loc:g}, scale={scale:g}) has no finite quantile")
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


def _mle(x: np.ndarray) -> tuple[float, float, float] | str:
    """Three-parameter maximum likelihood fit, or the reason it is unusable."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # scipy warns while its optimiser explores bad regions; the result is checked below.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            shape, loc, scale = (float(v) for v in stats.gamma.fit(x))
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

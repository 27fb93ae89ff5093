"""Clip scores beside the CAE's mean: pooling of patch errors, the envelope Gaussian, fusion.

numpy only: training fits these models and the service evaluates them from
the numbers in threshold.json (`service.bundle_scoring.Scoring`); both call the
functions here, so a clip is scored the same way on both sides.

Pooling turns the per-patch reconstruction errors, shape (n_patches,), into
one clip score. Every pooling is a weighted mean of the sorted errors with
non-negative weights that sum to 1, so `pool(a * e + b) == a * pool(e) + b`
for a > 0: that is what lets a fused bundle put its patch errors on the clip
score's scale for the segments.

* `mean`: today's score.
* `max`: the worst patch.
* `topk`: the mean of the k largest errors; `param` < 1 is a fraction of
  the patches (k = ceil(param * n), at least 1), `param` >= 1 a count.
* `gwrp`: global weighted rank pooling, weights `r**i` over the errors
  sorted from the largest (i = 0, 1, ...), normalised; r = 1 is the mean and
  r -> 0 the max.

The envelope scorer sees what a reconstruction error on per-bin standardised
log-mel cannot: a change of the whole level or spectral envelope. Its input
is the clip's time-averaged log-mel in dB before standardisation
(`Score.band_db`, shape (n_mels,)), averaged into `ENVELOPE_BANDS` coarse
bands; a Gaussian per machine ID is fitted to the training clips' vectors and
a clip's score is its Mahalanobis distance (the square root of the quadratic
form, so it grows linearly with a gain: +g dB moves every band by g).

The covariance is Ledoit-Wolf shrinkage toward a scaled identity: the sample
covariance of 10 clips in 32 bands has rank 9 and no inverse, and the
Ledoit-Wolf weight (estimated from the data, no tuning) is large when clips
are few and small when they are many. A scaled identity is a natural target
here because every band shares one unit, dB. Coarse bands keep the stored
precision matrix at 32 x 32 numbers per ID; the CAE sees the fine structure.

The spectrum scorer is the same Gaussian on another view of the clip: its
long-term power spectrum at a fine frequency resolution
(`service.features.long_term_spectrum`, 4096-sample frames: 3.9 Hz bins at
16 kHz) in dB, averaged into log-spaced bands of FFT bins (`spectrum_edges`:
single bins up to about 100 Hz, wider above). The log-mel's 15.6-Hz STFT and
triangular filters smear the tones of a rotating machine (shaft and
blade-pass harmonics, a speed change moving them by a few hertz); this
view keeps them.

Fusion standardises each scorer's raw score per ID with the mean and std of
that scorer's scores on held-out normal clips and combines the z-scores by a
rule (`FUSIONS`):

* `mean`: `offset + mean_j max(z_j, -offset)`; a fault that one scorer sees
  is diluted by the other's normal-looking score;
* `max`: `offset + max_j max(z_j, -offset)`, an alarm when either scorer
  leaves its normal range; a scorer that sees nothing of a fault no longer
  halves what the other sees, at the price of two chances of a false alarm
  per clip (the threshold is fitted to the fused scores, so the rate holds).

The offset keeps the score positive, which the gamma threshold and the
score / threshold ratio need; a scorer far below its normal range (more
than `offset` stds) counts as `-offset`, so under the mean one scorer
cannot hide what another sees by being very low, and the score is never
negative. Patch scores apply the same rule to each patch's CAE z-score and
the clip's envelope z-score; pooled, they give the clip score under the
mean rule (floors aside) and under max pooling, and at least the clip score
otherwise (a patch may exceed the envelope where the pooled error does not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

POOLINGS = ("mean", "max", "topk", "gwrp")
DEFAULT_POOLING_PARAM = {"topk": 0.1, "gwrp": 0.9}
ENVELOPE_BANDS = 32
# Added to the shrunk covariance's diagonal (dB²): keeps the precision finite
# when every training clip has the same envelope (e.g. identical files).
MIN_VARIANCE_DB2 = 1e-4
MIN_ENVELOPE_CLIPS = 2
FUSION_OFFSET = 5.0
# The spectrum scorer's defaults: 4096-sample frames (3.9 Hz bins at 16 kHz), half overlapping,
# averaged into log-spaced bands from bin 2, so that the bands stay single bins at low frequencies.
SPECTRUM_N_FFT = 4096
SPECTRUM_HOP = 2048
SPECTRUM_BANDS = 128
FUSIONS = ("mean", "max")


def check_pooling(pooling: str, param: float | None) -> float | None:
    """The pooling's parameter, its default filled in; ValueError for a pooling or value out of range.

    mean and max take none; topk a fraction in (0, 1) or a whole count >= 1;
    gwrp a ratio r in (0, 1].
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose {', '.join(POOLINGS)}")
    if pooling in ("mean", "max"):
        if param is not None:
            raise ValueError(f"pooling {pooling} takes no parameter, got {param}")
        return None
    value = DEFAULT_POOLING_PARAM[pooling] if param is None else float(param)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"the {pooling} parameter must be a positive number, got {param}")
    if pooling == "topk" and value >= 1 and value != int(value):
        raise ValueError(f"topk takes a fraction below 1 or a whole count of patches, got {param}")
    if pooling == "gwrp" and value > 1:
        raise ValueError(f"the gwrp ratio r must be in (0, 1], got {param}")
    return value


def topk_count(param: float, n: int) -> int:
    """How many patches of `n` the topk pooling averages."""
    if param >= 1:
        return min(n, int(param))
    # The tolerance keeps 0.1 * 30 (3.0000000000000004 in floating point) at 3.
    return min(n, max(1, math.ceil(param * n - 1e-9)))


def pool(errors: np.ndarray, *, pooling: str, param: float | None = None) -> float:
    """The clip score of patch errors, shape (n_patches,), n_patches >= 1 (see module doc)."""
    if pooling == "mean":
        return float(errors.mean())  # float32 mean, as the scores before pooling existed
    if pooling == "max":
        return float(errors.max())
    ordered = np.sort(np.asarray(errors, dtype=np.float64))[::-1]
    if pooling == "topk":
        assert param is not None
        return float(ordered[: topk_count(param, ordered.size)].mean())
    if pooling == "gwrp":
        assert param is not None
        weights = param ** np.arange(ordered.size, dtype=np.float64)
        return float(ordered @ weights / weights.sum())
    raise ValueError(f"unknown pooling {pooling!r}")


def band_edges(*, n_mels: int, n_bands: int = ENVELOPE_BANDS) -> list[int]:
    """Mel-bin boundaries of the coarse bands, shape (n_bands + 1,): 0 ... n_mels, strictly increasing."""
    n = max(1, min(n_bands, n_mels))
    return [int(e) for e in np.round(np.linspace(0, n_mels, n + 1))]


def spectrum_edges(
    *, n_fft: int = SPECTRUM_N_FFT, n_bands: int = SPECTRUM_BANDS, first: int = 2
) -> list[int]:
    """FFT-bin boundaries of log-spaced bands from bin `first` to the last (1 + n_fft // 2), increasing.

    Spacing below one bin collapses, so there are at most `n_bands` bands.
    """
    n_bins = 1 + n_fft // 2
    edges = np.unique(np.round(np.geomspace(first, n_bins, n_bands + 1)).astype(np.int64))
    return [int(e) for e in edges]


def coarse_bands(band_db: np.ndarray, edges: Sequence[int] | np.ndarray) -> np.ndarray:
    """(..., n_bins) dB -> (..., n_bands): the mean of each band's bins [e_i, e_i+1), float64."""
    e = np.asarray(edges, dtype=np.int64)
    x = np.asarray(band_db, dtype=np.float64)[..., : e[-1]]  # reduceat's last band would run to the end
    return np.add.reduceat(x, e[:-1], axis=-1) / np.diff(e)


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) covariance of samples `x`, shape (n, p): ((p, p) matrix, shrinkage in [0, 1]).

    `(1 - s) * S + s * mu * I`, S the maximum-likelihood covariance (divided
    by n), mu = trace(S) / p, and s the estimate of the optimal weight; the
    same numbers as `sklearn.covariance.ledoit_wolf`.
    """
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    centred = x - x.mean(axis=0)
    sample = centred.T @ centred / n
    mu = float(np.trace(sample)) / p
    squares = centred**2
    # delta: distance of S from the target; beta: how noisy S is, both per feature (Ledoit-Wolf lemma 3.3).
    delta = float(np.sum((sample - mu * np.eye(p)) ** 2)) / p
    beta = (float(np.sum(squares.T @ squares)) / n - float(np.sum(sample**2))) / (n * p)
    shrinkage = 0.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
    shrunk = (1.0 - shrinkage) * sample
    shrunk.flat[:: p + 1] += shrinkage * mu
    return shrunk, shrinkage


@dataclass(frozen=True)
class Gaussian:
    """An envelope model: `mean` (k,) dB, `precision` (k, k), the Ledoit-Wolf weight, clips fitted on."""

    mean: np.ndarray
    precision: np.ndarray
    shrinkage: float
    n_clips: int

    def distance(self, vectors: np.ndarray) -> np.ndarray | float:
        """Mahalanobis distance of coarse-band vectors (..., k): shape (...), a float for one vector."""
        return mahalanobis(vectors, mean=self.mean, precision=self.precision)


def fit_gaussian(vectors: np.ndarray) -> Gaussian:
    """The envelope Gaussian of coarse-band vectors, shape (n, k), n >= `MIN_ENVELOPE_CLIPS`."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_ENVELOPE_CLIPS:
        raise ValueError(
            f"an envelope model needs at least {MIN_ENVELOPE_CLIPS} vectors of shape (k,), "
            f"got an array of shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("an envelope vector is NaN or infinite")
    covariance, shrinkage = ledoit_wolf(x)
    covariance.flat[:: x.shape[1] + 1] += MIN_VARIANCE_DB2
    precision = np.linalg.inv(covariance)
    precision = (precision + precision.T) / 2  # exactly symmetric, as the bundle checks
    return Gaussian(mean=x.mean(axis=0), precision=precision, shrinkage=shrinkage, n_clips=int(x.shape[0]))


def mahalanobis(vectors: np.ndarray, *, mean: np.ndarray, precision: np.ndarray) -> np.ndarray | float:
    """sqrt((x - mean)ᵀ P (x - mean)) for x of shape (k,) (a float) or (n, k) (shape (n,))."""
    diff = np.asarray(vectors, dtype=np.float64) - mean
    if diff.ndim == 1:
        return math.sqrt(max(float(diff @ precision @ diff), 0.0))
    distances: np.ndarray = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", diff, precision, diff), 0.0))
    return distances


def fuse(
    z: Sequence[np.ndarray | float], *, offset: float = FUSION_OFFSET, rule: str = "mean"
) -> np.ndarray | float:
    """`offset + rule_j max(z_j, -offset)` of standardised scores (scalars or broadcastable arrays).

    `rule` is one of `FUSIONS`: the mean or the max over the scorers j.
    """
    floored = [np.maximum(np.asarray(v, dtype=np.float64), -offset) for v in z]
    if rule == "mean":
        total = offset + sum(floored[1:], floored[0]) / len(floored)
    elif rule == "max":
        total = offset + np.maximum.reduce(np.broadcast_arrays(*floored))
    else:
        raise ValueError(f"unknown fusion rule {rule!r}; choose {', '.join(FUSIONS)}")
    return float(total) if np.ndim(total) == 0 else total

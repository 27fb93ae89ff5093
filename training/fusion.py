"""The envelope scorer of ``--scorer cae+envelope``: its Gaussians, and its fusion with the CAE.

`fit_envelopes` fits Gaussians to training clips' mean levels per coarse band
(model-wide and per machine ID); `fit_scoring` turns held-out raw scores into
the bundle's fused `scoring` section (each scorer's per-ID standardisation);
`fused_scores` recomputes the fused scores of those clips as
`service.detector.Detector.combine` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.bundle_scoring import (
    EnvelopeModel,
    Fusion,
    Pooling,
    ScoresFrom,
    Scoring,
    ScoringEntry,
    Standardisation,
)
from service.scorers import FUSION_OFFSET, Gaussian, coarse_bands, fit_gaussian, fuse
from training.errors import ExportError
from training.threshold import MIN_ID_CLIPS


@dataclass(frozen=True)
class RawScores:
    """Calibration clips' scorer scores before standardisation, each of shape (n_clips,).

    `cae`: the pooled patch error. `envelope_own`: the envelope distance under
    the clip's own ID's Gaussian (the model-wide one for an ID without its own
    entry), as a request naming that ID is scored; `envelope_wide`: under the
    model-wide Gaussian, as a request without a machine ID.
    """

    cae: np.ndarray
    envelope_own: np.ndarray | None = None
    envelope_wide: np.ndarray | None = None


@dataclass(frozen=True)
class Envelopes:
    """Envelope Gaussians on coarse bands `edges` (mel-bin boundaries): the model-wide one, some IDs' own."""

    edges: list[int]
    wide: Gaussian
    per_id: dict[str, Gaussian]

    def distances(self, band_db: np.ndarray, machine_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(own, wide) Mahalanobis distances, each (n,), of mean levels `band_db` (n, n_mels) in dB."""
        x = coarse_bands(band_db, self.edges)
        wide = np.asarray(self.wide.distance(x), dtype=np.float64).reshape(len(x))
        own = wide.copy()
        ids = np.asarray(machine_ids)
        for machine_id, gaussian in self.per_id.items():
            rows = ids == machine_id
            if rows.any():
                own[rows] = gaussian.distance(x[rows])
        return own, wide


def fit_envelopes(
    band_db: np.ndarray, machine_ids: Sequence[str], *, edges: Sequence[int], own_ids: Sequence[str]
) -> Envelopes:
    """Gaussians of training clips' mean levels `band_db` (n, n_mels): all clips, and each of `own_ids`'."""
    x = coarse_bands(band_db, edges)
    ids = np.asarray(machine_ids)
    return Envelopes(
        edges=list(edges), wide=fit_gaussian(x), per_id={mid: fit_gaussian(x[ids == mid]) for mid in own_ids}
    )


def standardisation(values: np.ndarray) -> Standardisation:
    """Mean and sample std (ddof 1) of one scorer's held-out normal scores, shape (n,), n >= 2."""
    x = np.asarray(values, dtype=np.float64)
    std = float(np.std(x, ddof=1)) if x.size >= 2 else 0.0
    if not std > 0:
        raise ExportError(f"{x.size} held-out scores with no spread; they cannot standardise a scorer")
    return Standardisation(mean=float(np.mean(x)), std=std, n_clips=int(x.size))


def _envelope_model(gaussian: Gaussian) -> EnvelopeModel:
    return EnvelopeModel(
        mean=gaussian.mean.tolist(),
        precision=gaussian.precision.tolist(),
        shrinkage=gaussian.shrinkage,
        n_clips=gaussian.n_clips,
    )


def fit_scoring(
    raw: RawScores,
    machine_ids: Sequence[str],
    *,
    envelopes: Envelopes | None,
    pooling: Pooling,
    pooling_param: float | None,
    scores_from: ScoresFrom,
    fusion: Fusion = "mean",
) -> Scoring:
    """The fused `scoring` section: `envelopes` and each scorer's standardisation from `raw`.

    `raw` must be held-out scores (a holdout's validation clips, a cross-fit's
    out-of-fold scores): in-sample scores would make the model look tighter
    than it is on new clips. Model-wide: all clips' CAE scores and model-wide
    envelope distances; an ID with its own Gaussian: its clips' CAE scores and
    own-Gaussian distances.
    """
    if envelopes is None or raw.envelope_own is None or raw.envelope_wide is None:
        raise ExportError("the envelope scorer needs envelope models and the calibration clips' distances")
    ids = np.asarray(machine_ids)
    per_id = {}
    for machine_id, gaussian in sorted(envelopes.per_id.items()):
        rows = ids == machine_id
        if int(rows.sum()) < MIN_ID_CLIPS:
            raise ExportError(
                f"machine ID {machine_id} has its own envelope model but {int(rows.sum())} "
                f"calibration clips; it needs {MIN_ID_CLIPS} for its standardisation"
            )
        per_id[machine_id] = ScoringEntry(
            envelope=_envelope_model(gaussian),
            standardisation={
                "cae": standardisation(raw.cae[rows]),
                "envelope": standardisation(raw.envelope_own[rows]),
            },
        )
    wide = ScoringEntry(
        envelope=_envelope_model(envelopes.wide),
        standardisation={"cae": standardisation(raw.cae), "envelope": standardisation(raw.envelope_wide)},
    )
    return Scoring(
        pooling=pooling,
        pooling_param=pooling_param,
        scorers=["cae", "envelope"],
        band_edges=list(envelopes.edges),
        offset=FUSION_OFFSET,
        fusion=fusion,
        standardised_from=scores_from,
        model_wide=wide,
        per_id=per_id or None,
    )


def fused_scores(
    raw: RawScores, machine_ids: Sequence[str], scoring: Scoring
) -> tuple[np.ndarray, np.ndarray]:
    """(own, wide) fused scores, each (n,), of raw scores under `scoring`'s standardisation.

    own: each clip with its ID's entry (the model-wide one for an ID without);
    wide: every clip with the model-wide entry. The arithmetic of `Detector.combine`.
    """
    assert raw.envelope_own is not None and raw.envelope_wide is not None and scoring.offset is not None
    offset = scoring.offset

    def fused(rows: np.ndarray, envelope: np.ndarray, entry: ScoringEntry) -> np.ndarray:
        cae, env = entry.standardisation["cae"], entry.standardisation["envelope"]
        return np.asarray(
            fuse(
                [(raw.cae[rows] - cae.mean) / cae.std, (envelope[rows] - env.mean) / env.std],
                offset=offset,
                rule=scoring.fusion,
            ),
            dtype=np.float64,
        ).reshape(int(rows.sum()))

    ids = np.asarray(machine_ids)
    everything = np.ones(len(ids), dtype=bool)
    assert scoring.model_wide is not None
    wide = fused(everything, raw.envelope_wide, scoring.model_wide)
    own = wide.copy()
    for machine_id, entry in (scoring.per_id or {}).items():
        rows = ids == machine_id
        own[rows] = fused(rows, raw.envelope_own, entry)
    return own, wide

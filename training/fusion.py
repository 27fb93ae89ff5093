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
    ScorerName,
    ScoresFrom,
    Scoring,
    ScoringEntry,
    SpectrumBands,
    Standardisation,
)
from service.scorers import (
    FUSION_OFFSET,
    SPECTRUM_HOP,
    SPECTRUM_N_FFT,
    Gaussian,
    coarse_bands,
    fit_gaussian,
    fuse,
    spectrum_edges,
)
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
    spectrum_own: np.ndarray | None = None  # the spectrum scorer's distances, as the envelope's
    spectrum_wide: np.ndarray | None = None


@dataclass(frozen=True)
class Envelopes:
    """Envelope Gaussians on coarse bands `edges` (mel-bin boundaries): the model-wide one, some IDs' own."""

    edges: list[int]
    wide: Gaussian
    per_id: dict[str, Gaussian]
    # The spectrum scorer's Gaussians, on FFT-bin bands of the long-term spectrum (same IDs).
    spectrum: Envelopes | None = None

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


def default_spectrum_bands() -> SpectrumBands:
    """The spectrum scorer's frames and bands (`service.scorers` defaults)."""
    return SpectrumBands(
        n_fft=SPECTRUM_N_FFT, hop=SPECTRUM_HOP, bin_edges=spectrum_edges(n_fft=SPECTRUM_N_FFT)
    )


def fit_envelopes(
    band_db: np.ndarray,
    machine_ids: Sequence[str],
    *,
    edges: Sequence[int],
    own_ids: Sequence[str],
    spectrum_db: np.ndarray | None = None,
    spectrum_edges: Sequence[int] | None = None,
) -> Envelopes:
    """Gaussians of training clips' mean levels `band_db` (n, n_mels): all clips, and each of `own_ids`'.

    With `spectrum_db` (n, n_bins) and its `spectrum_edges`, the spectrum scorer's Gaussians too.
    """
    x = coarse_bands(band_db, edges)
    ids = np.asarray(machine_ids)
    spectrum = None
    if spectrum_db is not None:
        assert spectrum_edges is not None
        spectrum = fit_envelopes(spectrum_db, machine_ids, edges=spectrum_edges, own_ids=own_ids)
    return Envelopes(
        edges=list(edges),
        wide=fit_gaussian(x),
        per_id={mid: fit_gaussian(x[ids == mid]) for mid in own_ids},
        spectrum=spectrum,
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
    spectrum: SpectrumBands | None = None,
) -> Scoring:
    """The fused `scoring` section: `envelopes` and each scorer's standardisation from `raw`.

    `raw` must be held-out scores (a holdout's validation clips, a cross-fit's
    out-of-fold scores): in-sample scores would make the model look tighter
    than it is on new clips. Model-wide: all clips' CAE scores and model-wide
    envelope distances; an ID with its own Gaussian: its clips' CAE scores and
    own-Gaussian distances. With `spectrum` (the spectrum scorer's bands) the
    same for `envelopes.spectrum` and the raw spectrum distances.
    """
    if envelopes is None or raw.envelope_own is None or raw.envelope_wide is None:
        raise ExportError("the envelope scorer needs envelope models and the calibration clips' distances")
    spectral = spectrum is not None
    if spectral and (envelopes.spectrum is None or raw.spectrum_own is None or raw.spectrum_wide is None):
        raise ExportError("the spectrum scorer needs spectrum models and the calibration clips' distances")
    ids = np.asarray(machine_ids)

    def entry(rows: np.ndarray, envelope: Gaussian, spec: Gaussian | None, own: bool) -> ScoringEntry:
        env_raw = raw.envelope_own if own else raw.envelope_wide
        assert env_raw is not None
        stats: dict[ScorerName, Standardisation] = {
            "cae": standardisation(raw.cae[rows]),
            "envelope": standardisation(env_raw[rows]),
        }
        if spec is not None:
            spec_raw = raw.spectrum_own if own else raw.spectrum_wide
            assert spec_raw is not None
            stats["spectrum"] = standardisation(spec_raw[rows])
        return ScoringEntry(
            envelope=_envelope_model(envelope),
            spectrum=None if spec is None else _envelope_model(spec),
            standardisation=stats,
        )

    per_id = {}
    for machine_id, gaussian in sorted(envelopes.per_id.items()):
        rows = ids == machine_id
        if int(rows.sum()) < MIN_ID_CLIPS:
            raise ExportError(
                f"machine ID {machine_id} has its own envelope model but {int(rows.sum())} "
                f"calibration clips; it needs {MIN_ID_CLIPS} for its standardisation"
            )
        own_spec = envelopes.spectrum.per_id[machine_id] if spectral and envelopes.spectrum else None
        per_id[machine_id] = entry(rows, gaussian, own_spec, own=True)
    wide_spec = envelopes.spectrum.wide if spectral and envelopes.spectrum else None
    wide = entry(np.ones(len(ids), dtype=bool), envelopes.wide, wide_spec, own=False)
    return Scoring(
        pooling=pooling,
        pooling_param=pooling_param,
        scorers=["cae", "envelope", "spectrum"] if spectral else ["cae", "envelope"],
        band_edges=list(envelopes.edges),
        spectrum=spectrum,
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

    def fused(rows: np.ndarray, own: bool, entry: ScoringEntry) -> np.ndarray:
        values = {
            "cae": raw.cae,
            "envelope": raw.envelope_own if own else raw.envelope_wide,
            "spectrum": raw.spectrum_own if own else raw.spectrum_wide,
        }
        z = []
        for name in scoring.scorers:
            stats, scores = entry.standardisation[name], values[name]
            assert scores is not None
            z.append((scores[rows] - stats.mean) / stats.std)
        return np.asarray(fuse(z, offset=offset, rule=scoring.fusion), dtype=np.float64).reshape(
            int(rows.sum())
        )

    ids = np.asarray(machine_ids)
    everything = np.ones(len(ids), dtype=bool)
    assert scoring.model_wide is not None
    wide = fused(everything, False, scoring.model_wide)
    own = wide.copy()
    for machine_id, entry in (scoring.per_id or {}).items():
        rows = ids == machine_id
        own[rows] = fused(rows, True, entry)
    return own, wide

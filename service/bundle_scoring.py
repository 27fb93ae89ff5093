"""The `scoring` section of `threshold.json`: how patch errors and other scorers become the clip score.

Part of the detector folder's schema (`service.bundle.Bundle.scoring`, re-exported there); absent,
a folder scores a clip as the CAE's mean patch error. `service.scorers` evaluates these numbers.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.scorers import check_pooling

__all__ = [
    "EnvelopeModel",
    "Fusion",
    "Pooling",
    "ScorerName",
    "ScoresFrom",
    "Scoring",
    "ScoringEntry",
    "SpectrumBands",
    "Standardisation",
]

# Where calibration scores came from: a holdout split, out-of-fold scores, or a site's recordings.
ScoresFrom = Literal["holdout", "cross_fit", "site"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # as every part of the bundle


Pooling = Literal["mean", "max", "topk", "gwrp"]
Fusion = Literal["mean", "max"]  # service.scorers.FUSIONS
ScorerName = Literal["cae", "envelope", "spectrum"]
# The scorer lists a bundle may name, in this order.
SCORER_SETS: tuple[list[str], ...] = (["cae"], ["cae", "envelope"], ["cae", "envelope", "spectrum"])


class EnvelopeModel(_Strict):
    """A Gaussian on a clip's mean log-mel level in coarse bands (dB): `service.scorers`."""

    mean: list[float] = Field(min_length=1, description="Mean level per coarse band, dB, shape (k,).")
    precision: list[list[float]] = Field(
        description="Inverse of the Ledoit-Wolf shrunk covariance (k, k): symmetric, positive definite."
    )
    shrinkage: float = Field(ge=0, le=1, description="Ledoit-Wolf weight of the scaled-identity target.")
    n_clips: int = Field(ge=2, description="Training clips the Gaussian was fitted on.")

    @model_validator(mode="after")
    def _positive_definite(self) -> EnvelopeModel:
        k = len(self.mean)
        matrix = (
            np.asarray(self.precision, dtype=np.float64)
            if all(len(row) == k for row in self.precision) and len(self.precision) == k
            else None
        )
        if matrix is None:
            raise ValueError(f"envelope precision must be {k} x {k}, as its mean has {k} bands")
        if not (np.isfinite(matrix).all() and np.isfinite(self.mean).all()):
            raise ValueError("envelope mean and precision must be finite")
        if not np.allclose(matrix, matrix.T, rtol=1e-9, atol=0.0):
            raise ValueError("envelope precision must be symmetric")
        try:
            np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise ValueError("envelope precision must be positive definite") from None
        return self


class Standardisation(_Strict):
    """One scorer's scores on held-out normal clips: its standardised score is `(s - mean) / std`."""

    mean: float
    std: float = Field(gt=0)
    n_clips: int = Field(ge=2)

    @model_validator(mode="after")
    def _finite(self) -> Standardisation:
        if not (np.isfinite(self.mean) and np.isfinite(self.std)):
            raise ValueError("standardisation mean and std must be finite")
        return self


def _cae_only() -> list[ScorerName]:
    return ["cae"]


class SpectrumBands(_Strict):
    """The spectrum scorer's input: a clip's long-term spectrum (`service.features.long_term_spectrum`)
    averaged in dB over bands of FFT bins."""

    n_fft: int = Field(ge=256, le=65536, description="Frame length in samples (bins n_fft / sr Hz apart).")
    hop: int = Field(ge=1, description="Samples between frames.")
    bin_edges: list[int] = Field(
        description="FFT-bin boundaries of the bands, increasing, at most 1 + n_fft // 2."
    )

    @model_validator(mode="after")
    def _edges(self) -> SpectrumBands:
        edges = np.asarray(self.bin_edges)
        if edges.size < 2 or edges[0] < 0 or np.any(np.diff(edges) <= 0) or edges[-1] > 1 + self.n_fft // 2:
            raise ValueError(f"spectrum bin_edges must increase strictly within 0 ... {1 + self.n_fft // 2}")
        if self.hop > self.n_fft:
            raise ValueError(f"spectrum hop {self.hop} is longer than its frame ({self.n_fft})")
        return self


class ScoringEntry(_Strict):
    """What scores the clips of one machine ID, or of any ID (the model-wide entry)."""

    envelope: EnvelopeModel
    spectrum: EnvelopeModel | None = Field(
        None, description="The spectrum scorer's Gaussian on the bands of `Scoring.spectrum` (dB)."
    )
    standardisation: dict[ScorerName, Standardisation] = Field(
        description="Per scorer: the mean and std of its scores on held-out normal clips of this ID."
    )


class Scoring(_Strict):
    """How patch errors and other scorers become the clip score; absent: the CAE's mean patch error.

    With `scorers` ["cae", "envelope"] (and "spectrum") the score is
    `offset + fusion_j max((s_j - mean_j) / std_j, -offset)` over the CAE's
    pooled error, the envelope's Mahalanobis distance (and the spectrum's),
    `fusion` the mean or the max over them, with the machine ID's entry (`per_id`) when the
    request names an ID that has one, else the model-wide entry
    (`service.scorers`). Folders written before `fusion` existed use the mean.
    """

    pooling: Pooling = "mean"
    pooling_param: float | None = Field(
        None, description="topk: a fraction of the patches (< 1) or a count; gwrp: the ratio r in (0, 1]."
    )
    scorers: list[ScorerName] = Field(default_factory=_cae_only)
    band_edges: list[int] | None = Field(
        None, description="Mel-bin boundaries of the envelope's coarse bands, 0 ... n_mels."
    )
    spectrum: SpectrumBands | None = Field(
        None, description="The spectrum scorer's bands; with that scorer only."
    )
    offset: float | None = Field(None, gt=0, description="Keeps fused scores positive (see above).")
    fusion: Fusion = Field(
        "mean", description="How the scorers' z-scores combine: their mean, or the larger (max)."
    )
    standardised_from: ScoresFrom | None = Field(
        None, description="Held-out scores the standardisation came from: holdout or cross_fit (out-of-fold)."
    )
    model_wide: ScoringEntry | None = None
    per_id: dict[str, ScoringEntry] | None = Field(
        None, description="Machine IDs with their own envelope model and standardisation."
    )

    @property
    def fused(self) -> bool:
        return len(self.scorers) > 1

    def entry_for(self, machine_id: str | None) -> tuple[str | None, ScoringEntry | None]:
        """(the ID whose entry applies, or None for the model-wide one; the entry, None when not fused)."""
        if machine_id is not None and self.per_id and machine_id in self.per_id:
            return machine_id, self.per_id[machine_id]
        return None, self.model_wide

    @model_validator(mode="after")
    def _consistent(self) -> Scoring:
        if check_pooling(self.pooling, self.pooling_param) != self.pooling_param:
            raise ValueError(f"pooling {self.pooling} needs its parameter stated (pooling_param)")
        if self.scorers not in SCORER_SETS:
            raise ValueError(f"scorers must be one of {', '.join(map(str, SCORER_SETS))}, got {self.scorers}")
        spectral = "spectrum" in self.scorers
        if (self.spectrum is not None) != spectral:
            raise ValueError("the spectrum section belongs with the spectrum scorer, and it needs one")
        parts = (self.band_edges, self.offset, self.standardised_from, self.model_wide, self.per_id)
        if not self.fused:
            if self.fusion != "mean":
                raise ValueError(f"fusion {self.fusion} needs two scorers, got {self.scorers}")
            if any(part is not None for part in parts):
                raise ValueError(
                    "band_edges, offset, standardised_from, model_wide and per_id belong to "
                    "fused scorers only"
                )
            return self
        if self.band_edges is None or self.offset is None or self.model_wide is None:
            raise ValueError("the envelope scorer needs band_edges, offset and model_wide")
        edges = np.asarray(self.band_edges)
        if edges.size < 2 or edges[0] != 0 or np.any(np.diff(edges) <= 0):
            raise ValueError("band_edges must increase strictly from 0")
        for name, entry in [("model_wide", self.model_wide), *(self.per_id or {}).items()]:
            if len(entry.envelope.mean) != edges.size - 1:
                raise ValueError(
                    f"scoring entry {name}: {len(entry.envelope.mean)} envelope bands, "
                    f"band_edges give {edges.size - 1}"
                )
            if spectral != (entry.spectrum is not None):
                raise ValueError(
                    f"scoring entry {name}: a spectrum model exactly when the spectrum scorer is on"
                )
            if self.spectrum is not None and entry.spectrum is not None:
                n_bands = len(self.spectrum.bin_edges) - 1
                if len(entry.spectrum.mean) != n_bands:
                    raise ValueError(
                        f"scoring entry {name}: {len(entry.spectrum.mean)} spectrum bands, "
                        f"bin_edges give {n_bands}"
                    )
            if sorted(entry.standardisation) != sorted(self.scorers):
                raise ValueError(
                    f"scoring entry {name}: standardisation of {sorted(entry.standardisation)}, "
                    f"scorers are {self.scorers}"
                )
        return self

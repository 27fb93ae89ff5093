"""`FitOptions`: everything `asd-train fit` can be told, the per-architecture defaults and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from service.audio import Channel
from service.bundle import Precision
from service.bundle_scoring import Fusion, Pooling
from service.features import FeatureParams
from service.scorers import check_pooling
from training.dataset import Arch
from training.errors import DatasetError
from training.model import CaeConfig
from training.threshold import quantile_for

# Per-architecture defaults; the measurements behind them are in models/README.md.
# cae: 8-frame patches without overlap and 8 epochs of batch 64, the best of an ablation over patch
# width, code size and decoder order; short patches keep brief events (clicks, impacts) from being
# averaged away, and 8 epochs keep `fit` of the reference set within minutes ("Training speed").
# dense: the DCASE 2020 baseline's 5 frames, hop 1 and batch 512, its 100 epochs cut to 20 (the
# validation loss flattens long before).
ARCH_DEFAULTS: dict[str, dict[str, int]] = {
    "cae": {"frames": 8, "patch_hop": 8, "batch_size": 64, "epochs": 8},
    "dense": {"frames": 5, "patch_hop": 1, "batch_size": 512, "epochs": 20},
}
ScorerChoice = Literal["cae", "cae+envelope", "cae+envelope+spectrum"]
SCORERS: tuple[ScorerChoice, ...] = ("cae", "cae+envelope", "cae+envelope+spectrum")
# The clip score per architecture: `cae` is the autoencoder's reconstruction error alone (for the
# dense baseline too, which stays the DCASE recipe); `cae+envelope` fuses it with the envelope
# scorer, `cae+envelope+spectrum` also with the spectrum scorer (service.scorers).
ARCH_SCORERS: dict[str, ScorerChoice] = {"cae": "cae+envelope", "dense": "cae"}
# How a fused scorer combines its z-scores (service.scorers): models/README.md, "Fusion rules".
DEFAULT_FUSION: Fusion = "mean"

CalibrationMode = Literal["auto", "cross-fit", "holdout"]
# `auto` cross-fits while the smallest machine ID has fewer clips than this: a
# 10 % holdout would leave each ID too few calibration clips for a threshold it
# can trust (models/README.md, "Calibration"), and k + 1 fits of a few hundred
# clips stay within minutes. From here on, one fit with a holdout.
CROSS_FIT_BELOW = 250
DEFAULT_FOLDS = 5
MIN_FIT_CLIPS = 10


@dataclass(frozen=True)
class FitOptions:
    """Everything `fit` can be told; None means the architecture's default (`ARCH_DEFAULTS`)."""

    machine_type: str = "slider"
    ids: tuple[str, ...] | None = None
    arch: Arch = "cae"
    frames: int | None = None
    patch_hop: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    patience: int = 5
    false_alarm_rate: float | None = None
    channel: Channel = 0
    learning_rate: float = 1e-3
    cae: CaeConfig = field(default_factory=CaeConfig)
    features: FeatureParams = field(default_factory=FeatureParams)
    calibration: CalibrationMode = "auto"
    folds: int = DEFAULT_FOLDS
    # How patch errors become the clip score, and whether the envelope scorer joins the CAE.
    pooling: Pooling = "mean"
    pooling_param: float | None = None  # None: the pooling's default (service.scorers)
    scorer: ScorerChoice | None = None  # None: the architecture's (`ARCH_SCORERS`)
    fusion: Fusion | None = None  # None: `DEFAULT_FUSION` for a fused scorer
    precision: Precision = "fp32"  # int8: the exported graph quantized (training.quantize)
    workers: int = 2
    progress: bool = True

    @property
    def fused(self) -> bool:
        return self.scorer in ("cae+envelope", "cae+envelope+spectrum")

    @property
    def spectral(self) -> bool:
        return self.scorer == "cae+envelope+spectrum"

    def resolved(self) -> FitOptions:
        """A copy with every None default filled in for `arch`, validated."""
        if self.arch not in ARCH_DEFAULTS:
            raise DatasetError(f"unknown architecture {self.arch!r}; choose cae or dense")
        defaults = ARCH_DEFAULTS[self.arch]
        if self.scorer is not None and self.scorer not in SCORERS:
            raise DatasetError(f"unknown scorer {self.scorer!r}; choose {', '.join(SCORERS)}")
        try:
            pooling_param = check_pooling(self.pooling, self.pooling_param)
        except ValueError as error:
            raise DatasetError(f"--pooling {self.pooling}: {error}") from None
        done = replace(
            self,
            frames=defaults["frames"] if self.frames is None else self.frames,
            patch_hop=defaults["patch_hop"] if self.patch_hop is None else self.patch_hop,
            epochs=defaults["epochs"] if self.epochs is None else self.epochs,
            batch_size=defaults["batch_size"] if self.batch_size is None else self.batch_size,
            pooling_param=pooling_param,
            scorer=ARCH_SCORERS[self.arch] if self.scorer is None else self.scorer,
            fusion=DEFAULT_FUSION if self.fusion is None else self.fusion,
        )
        if done.fusion not in ("mean", "max"):
            raise DatasetError(f"unknown fusion {done.fusion!r}; choose mean or max")
        if self.fusion is not None and self.fusion != "mean" and not done.fused:
            raise DatasetError(
                f"--fusion {self.fusion} combines scorers: it needs --scorer cae+envelope or cae+envelope+spectrum"
            )
        for name in ("frames", "patch_hop", "epochs", "batch_size"):
            if getattr(done, name) <= 0:
                raise DatasetError(f"{name.replace('_', '-')} must be positive, got {getattr(done, name)}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise DatasetError(f"learning-rate must be a positive number, got {self.learning_rate}")
        if self.patience < 0:
            raise DatasetError(f"patience must be >= 0, got {self.patience}")
        if self.calibration not in ("auto", "cross-fit", "holdout"):
            raise DatasetError(f"unknown calibration {self.calibration!r}; choose auto, cross-fit or holdout")
        if self.folds < 2:
            raise DatasetError(f"folds must be at least 2, got {self.folds}")
        if self.precision not in ("fp32", "int8"):
            raise DatasetError(f"unknown precision {self.precision!r}; choose fp32 or int8")
        quantile_for(self.false_alarm_rate)  # validates the rate now, not after training
        if self.arch == "cae":
            assert done.frames is not None  # filled in above
            self.cae.check(n_mels=self.features.n_mels, frames=done.frames)
        return done

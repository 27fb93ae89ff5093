"""`FitSummary`: what a fit did and the threshold it set, and the lines `asd-train fit` prints of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.bundle import Threshold, ThresholdFit
from training.fusion import RawScores
from training.quantize import Parity


@dataclass(frozen=True)
class FitSummary:
    out: Path
    arch: str
    n_files: int
    n_train: int
    n_validation: int
    clips_per_id: dict[str, int]
    hours: float
    skipped: list[tuple[str, str]]  # (file name, reason)
    ignored_anomalies: int
    epochs_run: int
    best_epoch: int
    loss: float
    val_loss: float | None
    seconds: dict[str, float]  # features, training, export, total
    threshold: Threshold
    calibration_scores: np.ndarray  # (n_calibration,)
    calibration_ids: list[str]  # machine ID of each calibration score
    max_onnx_difference: float
    keras_model: object = field(default=None, repr=False, compare=False)  # the trained keras.Model
    # cae+envelope: the calibration clips scored without a machine ID (the model-wide threshold's scores)
    # and every scorer's raw held-out scores (training.fusion.RawScores) the standardisation came from.
    calibration_scores_wide: np.ndarray | None = None
    raw_scores: RawScores | None = None
    scoring: str = "cae, mean pooling"
    parity: Parity | None = None  # --precision int8: the gate's figures

    @property
    def quantile(self) -> float:
        return self.threshold.quantile

    @property
    def empirical_far(self) -> float:
        return self.threshold.empirical_false_alarm_rate

    @property
    def n_calibration(self) -> int:
        return self.threshold.n_calibration_clips

    def lines(self) -> list[str]:
        ids = " ".join(f"{k}={v}" for k, v in self.clips_per_id.items())
        s = self.seconds
        t = self.threshold
        val = "" if self.val_loss is None else f", val_loss {self.val_loss:.4f}"
        if t.scores_from == "cross_fit":
            scored = f"out-of-fold scores of all {t.n_calibration_clips} clips ({t.folds}-fold cross-fit)"
            training = f"{self.n_train} train (every one also held out once)"
        else:
            scored = f"{t.n_calibration_clips} held-out normal clips"
            training = f"{self.n_train} train, {self.n_validation} validation"
        out = [
            f"fit summary ({self.arch}) -> {self.out}",
            f"  clips      {self.n_train + self.n_validation} read of {self.n_files} files "
            f"({training}); per ID: {ids}",
            f"  audio      {self.hours:.2f} h",
            f"  skipped    {len(self.skipped)}",
        ]
        out += [f"    {name}: {reason}" for name, reason in self.skipped[:20]]
        if len(self.skipped) > 20:
            out.append(f"    ... and {len(self.skipped) - 20} more (listed in threshold.json)")
        if self.ignored_anomalies:
            out.append(f"  ignored    {self.ignored_anomalies} files named anomaly_* (not trained on)")
        out += [
            f"  epochs     {self.epochs_run} run, best {self.best_epoch}: loss {self.loss:.4f}{val}"
            if t.scores_from != "cross_fit"
            else f"  epochs     {self.epochs_run} run (the folds' median optimiser steps to their best epoch), loss {self.loss:.4f}; "
            f"folds' held-out loss {self.val_loss:.4f}",
            f"  time       features {s['features']:.1f} s, training {s['training']:.1f} s, "
            f"export {s['export']:.1f} s, total {s['total']:.1f} s",
            f"  onnx       max |onnx - keras| = {self.max_onnx_difference:.2e}",
            *([] if self.parity is None else [f"  precision  {self.parity.describe()}"]),
            f"  scoring    {self.scoring}",
            f"  threshold  {t.value:.6g} model-wide (gamma q={t.quantile:.3f} on {scored}); "
            f"empirical false-alarm rate {t.empirical_false_alarm_rate:.3f} (target {1 - t.quantile:.3f})",
            f"             {_precision(t)}",
            *self.id_lines(),
        ]
        return out

    def id_lines(self) -> list[str]:
        """Per machine ID: its own threshold, calibrated and empirical false-alarm rates, precision."""
        if not self.threshold.per_id:
            return [
                "  per ID     none: fewer than 10 calibration clips per ID; every ID uses the model-wide one"
            ]
        ids = np.asarray(self.calibration_ids)
        # The model-wide column: this ID's clips as a request without a machine ID scores them.
        wide = self.calibration_scores_wide
        wide = self.calibration_scores if wide is None else wide
        rows = [
            ("ID", "threshold", "clips", "target", "empirical", "model-wide", "90 % interval", "for +/-3")
        ]
        for mid, fit in self.threshold.per_id.items():
            unnamed = float(np.mean(wide[ids == mid] > self.threshold.value))
            lo, hi = fit.false_alarm_interval or (float("nan"), float("nan"))
            rows.append(
                (
                    mid,
                    f"{fit.value:.6g}",
                    str(fit.n_calibration_clips),
                    f"{1 - fit.quantile:.3f}",
                    f"{fit.empirical_false_alarm_rate:.3f}",
                    f"{unnamed:.3f}",
                    f"{lo:.3f}-{hi:.3f}",
                    str(fit.clips_for_3_points),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        table = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
        note = (
            "(empirical: this ID's calibration clips above its own threshold; model-wide: above the "
            "model-wide one)"
        )
        return [
            "  per ID     " + table[0],
            *("             " + line for line in table[1:]),
            "             " + note,
        ]


def _precision(fit: ThresholdFit) -> str:
    """How far the calibration can be trusted, in words."""
    if fit.false_alarm_interval is None:
        return "precision unknown"
    lo, hi = fit.false_alarm_interval
    more = (fit.clips_for_3_points or fit.n_calibration_clips) - fit.n_calibration_clips
    tail = (
        "already within +/- 3 points"
        if more <= 0
        else f"about {more} more clips would narrow it to +/- 3 points"
    )
    return f"90 % interval of the false-alarm rate on new normal clips: {lo:.3f}-{hi:.3f}; {tail}"

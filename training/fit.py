"""`fit`: read the training clips, train an autoencoder, calibrate and export it (`run_fit`).

The steps, each timed for the fit summary:

1. features: list the training WAVs (`training.dataset`), decode and
   featurise them; unreadable or too-short files are skipped and reported;
2. split whole clips per machine ID into training and calibration clips
   (`training.crossfit`: a holdout or a cross-fit), fit the per-mel-bin
   standardisation on the training clips only, cut patches;
3. training (`training.train`): Adam on the MSE, early stopping on the
   validation loss with the best weights restored;
4. export (`training.export`): ONNX, check against Keras, gamma threshold
   from the calibration clips scored through the deployed `Detector`,
   `threshold.json`.

`--pooling` and `--scorer cae+envelope` change how the clip score is made
(`service.scorers`, `training.fusion`).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from service.bundle import Training
from service.inputcheck import build_fingerprint
from service.patches import PatchLayout
from service.scorers import SPECTRUM_HOP, SPECTRUM_N_FFT
from training.crossfit import choose_calibration, fit_cross, fit_holdout, make_candidate
from training.dataset import LoadResult, list_clips, load_features
from training.errors import DatasetError
from training.export import Calibration, export_detector
from training.fit_options import MIN_FIT_CLIPS, FitOptions
from training.fit_summary import FitSummary
from training.threshold import quantile_for

TRAINING_CURVES_FILE = "training_curves.png"


def min_seconds_for(options: FitOptions) -> float:
    """Shortest clip that still gives one patch (`PatchLayout.min_samples`), in seconds."""
    assert options.frames is not None and options.patch_hop is not None
    layout = PatchLayout(
        frames=options.frames, hop=options.patch_hop, arch=options.arch, params=options.features
    )
    return layout.min_samples / options.features.sample_rate


def read_training_clips(data_root: Path, options: FitOptions) -> tuple[LoadResult, int, int]:
    """Decode and featurise the training WAVs. Returns (result, n_files, n_ignored_anomalies)."""
    files = list_clips(data_root, machine_type=options.machine_type, split="train", ids=options.ids)
    # A plain folder may mix in recordings labelled anomalous; learning them as normal would hide them.
    usable = [f for f in files if f.label != "anomaly"]
    ignored = len(files) - len(usable)
    if not usable:
        raise DatasetError(
            f"all {len(files)} WAV files under {data_root} are named anomaly_*; nothing to train on"
        )
    with tqdm(total=len(usable), desc="features", unit="clip", disable=not options.progress) as bar:
        result = load_features(
            usable,
            params=options.features,
            channel=options.channel,
            min_seconds=min_seconds_for(options),
            workers=options.workers,
            progress=bar.update,
            spectrum=(SPECTRUM_N_FFT, SPECTRUM_HOP) if options.spectral else None,
        )
    if not result.clips:
        first = "; ".join(f"{s.path.name}: {s.reason}" for s in result.skipped[:3])
        raise DatasetError(f"none of the {len(usable)} WAV files could be used ({first})")
    return result, len(usable), ignored


def run_fit(
    data_root: Path,
    out: Path,
    options: FitOptions,
    *,
    command: str | None = None,
    stream: TextIO | None = None,
) -> FitSummary:
    """Train, calibrate and export a detector to `out`; prints progress and the summary to `stream`."""
    stream = sys.stdout if stream is None else stream
    options = options.resolved()
    assert options.frames is not None and options.patch_hop is not None
    quantile = quantile_for(options.false_alarm_rate)
    started = time.perf_counter()

    loaded, n_files, ignored = read_training_clips(Path(data_root), options)
    if len(loaded.clips) < MIN_FIT_CLIPS:
        raise DatasetError(
            f"only {len(loaded.clips)} readable clip(s); fit needs at least {MIN_FIT_CLIPS} normal clips "
            "(about 2 minutes of 10-s recordings)"
        )
    mode = choose_calibration(options, loaded.clips_per_id())
    features_done = time.perf_counter()
    if mode == "holdout":
        trained = fit_holdout(loaded.clips, options, stream)
    else:
        trained = fit_cross(loaded.clips, options, stream, data_root=str(data_root))
    training_done = time.perf_counter()
    history = trained.history

    seconds = {"features": features_done - started, "training": training_done - features_done}
    ids = sorted(loaded.clips_per_id())
    training = Training(
        trained_at=datetime.now(UTC),
        data_root=str(data_root),
        n_clips=len(trained.train_clips),
        n_validation_clips=len(trained.val_clips),
        hours=loaded.hours,
        clips_per_id=loaded.clips_per_id(),
        skipped_files=len(loaded.skipped),
        epochs_run=len(history["loss"]),
        seed=options.seed,
        final_loss=history["loss"][trained.best_epoch - 1],
        final_val_loss=trained.val_loss,
        command=command,
        arch_options=_arch_options(options),
        validation_clips_per_id=dict(sorted(Counter(c.file.machine_id for c in trained.val_clips).items())),
        validation_files=[c.file.path.name for c in trained.val_clips],
        skipped_names=[s.path.name for s in loaded.skipped],
        best_epoch=trained.best_epoch,
        loss_history=history["loss"],
        val_loss_history=history.get("val_loss") or None,
        seconds={k: round(v, 2) for k, v in seconds.items()},
        fold_best_epochs=trained.fold_best_epochs,
        fold_val_losses=trained.fold_val_losses,
    )
    stats = [c.stats for c in loaded.clips if c.stats is not None]
    fingerprint = build_fingerprint(stats, [c.file.machine_id for c in loaded.clips if c.stats is not None])
    to_score = 0 if trained.calibration.scores is not None else len(trained.calibration.paths)
    if options.precision == "int8":
        to_score = 2 * len(trained.calibration.paths)  # the parity gate scores them with both graphs
    with tqdm(
        total=to_score, desc="calibrate", unit="clip", disable=not options.progress or not to_score
    ) as bar:
        result = export_detector(
            trained.model,
            out=Path(out),
            candidate=make_candidate(options, trained.normalizer, ids, envelopes=trained.envelopes),
            check_inputs=trained.check_inputs,
            calibration=trained.calibration,
            channel=options.channel,
            quantile=quantile,
            training=training,
            fingerprint=fingerprint,
            progress=bar.update,
            quantize_inputs=trained.quantize_inputs,
        )
    finished = time.perf_counter()
    seconds.update(export=finished - training_done, total=finished - started)
    from training.plots import plot_training_curves

    plot_training_curves(
        history,
        Path(out) / TRAINING_CURVES_FILE,
        title=f"{options.machine_type} {options.arch}: training curves",
    )
    summary = FitSummary(
        out=Path(out),
        arch=options.arch,
        n_files=n_files,
        n_train=len(trained.train_clips),
        n_validation=len(trained.val_clips),
        clips_per_id=loaded.clips_per_id(),
        hours=loaded.hours,
        skipped=[(s.path.name, s.reason) for s in loaded.skipped],
        ignored_anomalies=ignored,
        epochs_run=training.epochs_run,
        best_epoch=trained.best_epoch,
        loss=history["loss"][trained.best_epoch - 1],
        val_loss=trained.val_loss,
        seconds=seconds,
        threshold=result.threshold,
        calibration_scores=result.calibration_scores,
        calibration_ids=list(trained.calibration.machine_ids),
        max_onnx_difference=result.max_onnx_difference,
        keras_model=trained.model,
        calibration_scores_wide=result.calibration_scores_wide,
        raw_scores=result.raw_scores,
        scoring=_describe_scoring(options, trained.calibration),
        parity=result.parity,
    )
    for line in summary.lines():
        print(line, file=stream)
    stream.flush()
    return summary


def _describe_scoring(options: FitOptions, calibration: Calibration) -> str:
    pooling: str = options.pooling
    if options.pooling_param is not None:
        pooling += f" {options.pooling_param:g}"
    if not options.fused:
        return f"cae, {pooling} pooling"
    where = "out-of-fold" if calibration.scores_from == "cross_fit" else "held-out"
    scorers = "envelope + spectrum" if options.spectral else "envelope"
    return (
        f"cae ({pooling} pooling) + {scorers}, each standardised per ID on {where} normal scores, "
        f"fused by the {options.fusion or 'mean'}, thresholds on the fused scores"
    )


def _arch_options(options: FitOptions) -> dict[str, object]:
    common: dict[str, object] = {
        "batch_size": options.batch_size,
        "max_epochs": options.epochs,
        "patience": options.patience,
        "learning_rate": options.learning_rate,
        "val_fraction": options.val_fraction,
        "channel": options.channel,
    }
    if options.arch == "cae":
        common.update(asdict(options.cae), filters=list(options.cae.filters))
    return common

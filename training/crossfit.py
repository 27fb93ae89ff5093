"""The exported model's training and its calibration scores: a holdout or a k-fold cross-fit.

`choose_calibration` picks the mode (`auto`: a cross-fit while the smallest
machine ID has fewer than `CROSS_FIT_BELOW` clips). A holdout trains one
model and keeps whole clips per ID aside for early stopping and the
threshold. A cross-fit trains k fold models that score the clips they did not
see through the deployed path, then the exported model on all clips; each
out-of-fold score is moved onto the final model's score level. Either way the
envelope Gaussians (``--scorer cae+envelope``) are fitted on the clips the
scoring model trained on, so the held-out scores that standardise and
calibrate them are honest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, TextIO

import numpy as np

from service.bundle import Training
from service.patches import PatchLayout
from service.scorers import band_edges, spectrum_edges
from training.dataset import FeatureClip, Normalizer, fit_normalizer, patch_array, split_validation
from training.errors import DatasetError
from training.export import Calibration, Candidate, raw_scores_with_model, score_with_model
from training.fit_options import CROSS_FIT_BELOW, FitOptions
from training.fusion import Envelopes, RawScores, default_spectrum_bands, fit_envelopes
from training.onnx_export import MAX_CHECK_PATCHES
from training.quantize import sample_patches
from training.threshold import MIN_CALIBRATION_CLIPS, MIN_ID_CLIPS
from training.train import train_keras


def choose_calibration(options: FitOptions, clips_per_id: dict[str, int]) -> Literal["cross-fit", "holdout"]:
    """`options.calibration`, with `auto` resolved by the smallest ID's clip count (`CROSS_FIT_BELOW`)."""
    if options.calibration != "auto":
        return options.calibration
    return "cross-fit" if min(clips_per_id.values()) < CROSS_FIT_BELOW else "holdout"


def assign_folds(clips: Sequence[FeatureClip], *, folds: int, seed: int) -> np.ndarray:
    """Fold index of each clip, shape (len(clips),): each ID's clips shuffled and dealt round the folds.

    Dealing per ID keeps every ID in (nearly) every fold; the offset carries on
    from one ID to the next so that small IDs do not all land in the first folds.
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(clips), dtype=np.int64)
    by_id: dict[str, list[int]] = {}
    for index, clip in enumerate(clips):
        by_id.setdefault(clip.file.machine_id, []).append(index)
    offset = 0
    for machine_id in sorted(by_id):
        indices = np.asarray(by_id[machine_id])
        order = rng.permutation(len(indices))
        fold[indices[order]] = (offset + np.arange(len(indices))) % folds
        offset += len(indices)
    return fold


@dataclass
class Trained:
    """The exported model's training, whichever way the calibration scores were made."""

    model: object  # keras.Model
    history: dict[str, list[float]]
    normalizer: Normalizer
    check_inputs: np.ndarray
    calibration: Calibration
    train_clips: list[FeatureClip]
    val_clips: list[FeatureClip]
    best_epoch: int
    val_loss: float | None
    fold_best_epochs: list[int] | None = None
    fold_val_losses: list[float] | None = None
    envelopes: Envelopes | None = None  # the exported model's, fitted on the clips it trained on
    quantize_inputs: np.ndarray | None = None  # --precision int8: training patches for the activation ranges


def make_candidate(
    options: FitOptions, normalizer: Normalizer, ids: Sequence[str], *, envelopes: Envelopes | None = None
) -> Candidate:
    assert options.frames is not None and options.patch_hop is not None
    return Candidate(
        arch=options.arch,
        params=options.features,
        frames=options.frames,
        hop=options.patch_hop,
        normalizer=normalizer,
        machine_type=options.machine_type,
        machine_ids=list(ids),
        pooling=options.pooling,
        pooling_param=options.pooling_param,
        envelopes=envelopes,
        fused=options.fused,
        fusion=options.fusion or "mean",
        spectrum=default_spectrum_bands() if options.spectral else None,
        precision=options.precision,
    )


def _envelopes(clips: Sequence[FeatureClip], options: FitOptions, *, own_ids: Sequence[str]) -> Envelopes:
    """Envelope Gaussians of the scoring model's training clips: all of them and each of `own_ids`'."""
    levels = np.stack([c.spec.mean(axis=1, dtype=np.float64) for c in clips])
    spectra = None
    if options.spectral:
        if any(c.spectrum_db is None for c in clips):
            raise DatasetError(
                "the spectrum scorer needs each training clip's spectrum (load_features(spectrum=))"
            )
        spectra = np.stack([np.asarray(c.spectrum_db, dtype=np.float64) for c in clips])
    return fit_envelopes(
        levels,
        [c.file.machine_id for c in clips],
        edges=band_edges(n_mels=options.features.n_mels),
        own_ids=own_ids,
        spectrum_db=spectra,
        spectrum_edges=spectrum_edges() if options.spectral else None,
    )


def _own_ids(clips: Sequence[FeatureClip]) -> list[str]:
    """IDs with enough calibration clips for their own threshold, hence their own envelope entry."""
    counts = Counter(c.file.machine_id for c in clips)
    return sorted(mid for mid, n in counts.items() if n >= MIN_ID_CLIPS)


def fit_holdout(clips: list[FeatureClip], options: FitOptions, stream: TextIO) -> Trained:
    """One model; whole clips per ID held out for early stopping and the threshold."""
    train_clips, val_clips = split_validation(clips, fraction=options.val_fraction, seed=options.seed)
    if len(val_clips) < MIN_CALIBRATION_CLIPS:
        raise DatasetError(
            f"only {len(val_clips)} validation clip(s) from {len(clips)} readable clips; the threshold "
            f"needs at least {MIN_CALIBRATION_CLIPS}: add clips, raise --val-fraction or use --calibration cross-fit"
        )
    normalizer = fit_normalizer(c.spec for c in train_clips)
    x_train = _patches(train_clips, normalizer, options)
    x_val = _patches(val_clips, normalizer, options)
    print(
        f"{len(train_clips)} training clips ({len(x_train)} patches), {len(val_clips)} validation clips "
        f"({len(x_val)} patches); threshold from the validation clips",
        file=stream,
        flush=True,
    )
    model, history = train_keras(x_train, x_val, options, stream=stream)
    # train_keras runs at least one epoch and raises on a non-finite loss, so both lists are full and finite.
    best = int(np.argmin(history["val_loss"]))
    envelopes = _envelopes(train_clips, options, own_ids=_own_ids(val_clips)) if options.fused else None
    return Trained(
        model=model,
        history=history,
        normalizer=normalizer,
        check_inputs=x_val,
        calibration=Calibration(
            paths=[c.file.path for c in val_clips],
            machine_ids=[c.file.machine_id for c in val_clips],
            scores_from="holdout",
        ),
        train_clips=train_clips,
        val_clips=val_clips,
        best_epoch=best + 1,
        val_loss=history["val_loss"][best],
        envelopes=envelopes,
        quantize_inputs=_quantize_inputs(x_train, options),
    )


def fit_cross(clips: list[FeatureClip], options: FitOptions, stream: TextIO, *, data_root: str) -> Trained:
    """k fold models score the clips they did not see; the exported model learns from all clips.

    Each fold model stops early on its own held-out fold; the final model runs
    the median of their optimiser steps up to the best epoch, since no clip
    is left to stop it.
    """
    assert options.batch_size is not None
    k = min(options.folds, len(clips))
    fold = assign_folds(clips, folds=k, seed=options.seed)
    print(
        f"{len(clips)} clips: {k}-fold cross-fit, then a final model on all of them", file=stream, flush=True
    )
    scores = np.empty(len(clips), dtype=np.float64)
    own_ids = _own_ids(clips)
    envelope_own = np.empty(len(clips), dtype=np.float64)
    envelope_wide = np.empty(len(clips), dtype=np.float64)
    spectrum_own = np.empty(len(clips), dtype=np.float64) if options.spectral else None
    spectrum_wide = np.empty(len(clips), dtype=np.float64) if options.spectral else None
    best_epochs: list[int] = []
    best_steps: list[int] = []
    fold_level: list[dict[str | None, float]] = []
    val_losses: list[float] = []
    scratch = Training(
        trained_at=datetime.now(UTC),
        data_root=data_root,
        n_clips=len(clips),
        n_validation_clips=0,
        hours=0.0,
        clips_per_id={},
        skipped_files=0,
        epochs_run=0,
        seed=options.seed,
    )
    for f in range(k):
        held = np.flatnonzero(fold == f)
        kept = [c for i, c in enumerate(clips) if fold[i] != f]
        out_clips = [clips[i] for i in held]
        normalizer = fit_normalizer(c.spec for c in kept)
        x_kept = _patches(kept, normalizer, options)
        model, history = train_keras(
            x_kept,
            _patches(out_clips, normalizer, options),
            options,
            stream=stream,
            label=f"fold {f + 1}/{k} ",
        )
        best = int(np.argmin(history["val_loss"]))
        best_epochs.append(best + 1)
        best_steps.append((best + 1) * -(-len(x_kept) // options.batch_size))
        fold_quantize_inputs = _quantize_inputs(x_kept, options)
        del x_kept
        val_losses.append(history["val_loss"][best])
        # Each fold's envelope Gaussians see only its training clips, as its CAE does.
        # One export scores the held-out clips and, for the alignment below, the fold's own training clips.
        both = out_clips + kept
        raw = raw_scores_with_model(
            model,
            make_candidate(options, normalizer, sorted({c.file.machine_id for c in clips})),
            [c.file.path for c in both],
            machine_ids=[c.file.machine_id for c in both],
            envelopes=_envelopes(kept, options, own_ids=own_ids) if options.fused else None,
            training=scratch,
            channel=options.channel,
            quantize_inputs=fold_quantize_inputs,
        )
        scores[held] = raw.cae[: len(out_clips)]
        fold_level.append(_levels(raw.cae[len(out_clips) :], [c.file.machine_id for c in kept]))
        if options.fused:
            assert raw.envelope_own is not None and raw.envelope_wide is not None
            envelope_own[held] = raw.envelope_own[: len(out_clips)]
            envelope_wide[held] = raw.envelope_wide[: len(out_clips)]
        if spectrum_own is not None and spectrum_wide is not None:
            assert raw.spectrum_own is not None and raw.spectrum_wide is not None
            spectrum_own[held] = raw.spectrum_own[: len(out_clips)]
            spectrum_wide[held] = raw.spectrum_wide[: len(out_clips)]
        del model
    # The final model takes as many optimiser steps as the median fold model did up to its best epoch,
    # not as many epochs: with few clips the loss is still falling at the last epoch, and a model that
    # took more steps scores new normal clips lower than the folds scored theirs, so the threshold
    # would flag far fewer than the target share (models/README.md, "Calibration").
    steps = max(1, round(float(np.median(best_steps))))
    normalizer = fit_normalizer(c.spec for c in clips)
    x_all = _patches(clips, normalizer, options)
    per_epoch = -(-len(x_all) // options.batch_size)
    epochs = -(-steps // per_epoch)
    model, history = train_keras(
        x_all, None, replace(options, epochs=epochs), stream=stream, label="final ", max_steps=steps
    )
    check_inputs = x_all[:MAX_CHECK_PATCHES].copy()
    quantize_inputs = _quantize_inputs(x_all, options)
    del x_all
    # Each fold model has its own score level (its initialisation and training path), and pooling
    # the folds' scores adds those offsets to the spread: the threshold lands far above the final
    # model's own normal scores (models/README.md, "Calibration"). So each out-of-fold score keeps
    # its distance from its fold model's level on that model's training clips of the same ID, and is
    # placed on the final model's level on its training clips.
    ids = [c.file.machine_id for c in clips]
    final_level = _levels(
        score_with_model(
            model,
            make_candidate(options, normalizer, sorted(set(ids))),
            [c.file.path for c in clips],
            training=scratch,
            channel=options.channel,
            quantize_inputs=quantize_inputs,
        ),
        ids,
    )
    for i, machine_id in enumerate(ids):
        level = fold_level[fold[i]]
        scores[i] += final_level.get(machine_id, final_level[None]) - level.get(machine_id, level[None])
    fused = options.fused
    return Trained(
        model=model,
        history=history,
        normalizer=normalizer,
        check_inputs=check_inputs,
        calibration=Calibration(
            paths=[c.file.path for c in clips],
            machine_ids=[c.file.machine_id for c in clips],
            scores_from="cross_fit",
            scores=scores,
            folds=k,
            raw=RawScores(
                cae=scores,
                envelope_own=envelope_own,
                envelope_wide=envelope_wide,
                spectrum_own=spectrum_own,
                spectrum_wide=spectrum_wide,
            )
            if fused
            else None,
        ),
        train_clips=list(clips),
        val_clips=[],
        best_epoch=epochs,
        val_loss=float(np.mean(val_losses)),
        fold_best_epochs=best_epochs,
        fold_val_losses=val_losses,
        envelopes=_envelopes(clips, options, own_ids=own_ids) if fused else None,
        quantize_inputs=quantize_inputs,
    )


def _levels(scores: np.ndarray, machine_ids: Sequence[str]) -> dict[str | None, float]:
    """Median score per machine ID, and over all clips under the key None."""
    ids = np.asarray(machine_ids)
    levels: dict[str | None, float] = {None: float(np.median(scores))}
    levels.update({mid: float(np.median(scores[ids == mid])) for mid in sorted(set(machine_ids))})
    return levels


def _quantize_inputs(patches: np.ndarray, options: FitOptions) -> np.ndarray | None:
    """An int8 fit's patches for the activation ranges: spread over all of `patches`, copied."""
    return sample_patches(patches).copy() if options.precision == "int8" else None


def _patches(clips: list[FeatureClip], normalizer: Normalizer, options: FitOptions) -> np.ndarray:
    assert options.frames is not None and options.patch_hop is not None
    # The layout the exported detector will cut by (`Detector.layout`), before the detector exists.
    layout = PatchLayout(
        frames=options.frames, hop=options.patch_hop, arch=options.arch, params=options.features
    )
    return patch_array([c.spec for c in clips], normalizer=normalizer, layout=layout)

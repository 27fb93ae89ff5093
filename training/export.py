"""Export a trained Keras autoencoder as a detector folder the service can load.

`export_detector` writes, into a temporary folder beside `out`:

1. `model.onnx` (`training.onnx_export`: tf2onnx, opset 17, dynamic batch
   axis, input "log_mel", output "reconstruction");
2. checks that onnxruntime reproduces Keras on real inputs (validation
   patches) to `ONNX_TOLERANCE`, else `ExportError`; with `Candidate.precision`
   "int8", replaces the graph by its int8 twin (`training.quantize`, ranges
   from training patches) once it has scored the calibration clips as they
   are scored again with it, and refuses it (`QuantizationError`) unless
   their scores pass the parity gate; everything below then uses the int8 graph;
3. scores the held-out normal clips through `service.detector.Detector` on
   that folder (the deployed scoring path), or takes the out-of-fold scores
   of a cross-fit (`Calibration`), and fits the gamma thresholds: the
   model-wide one and one per machine ID. With the envelope scorer
   (`Candidate.envelopes`) those held-out scores first give each scorer's
   per-ID standardisation (`training.fusion.fit_scoring`), and the thresholds
   are fitted to the fused scores of the same clips: per ID as a request
   naming the ID is scored, model-wide as one without;
4. writes `threshold.json` (`service.bundle.Bundle`) with the hash of the
   model and the training audio's input fingerprint, and loads the result
   once more with `Detector` as the service would.

Only then is the temporary folder renamed to `out` (`training.folders`,
replacing an earlier model there); on any failure it is removed, so `out`
never holds a half-written model.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.audio import AudioError, Channel
from service.bundle import (
    MODEL_FILE,
    Bundle,
    Features,
    GammaFit,
    Normalization,
    OnnxModel,
    Patching,
    Precision,
    Threshold,
    Training,
    sha256_of,
)
from service.bundle_scoring import Fusion, Pooling, ScoresFrom, Scoring, SpectrumBands
from service.detector import Detector, Score
from service.features import FeatureParams
from service.inputcheck import Fingerprint
from service.patches import Arch
from training.dataset import Normalizer
from training.errors import ExportError
from training.folders import check_replaceable, replace_folder
from training.fusion import Envelopes, RawScores, fit_scoring, fused_scores
from training.model import INPUT_NAME, OUTPUT_NAME
from training.onnx_export import OPSET, check_onnx, to_onnx
from training.quantize import Parity, cae_score, check_parity, quantize_folder
from training.threshold import DEFAULT_QUANTILE, MIN_ID_CLIPS, calibrate

if TYPE_CHECKING:
    import keras

_VERSIONED = (
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "numpy",
    "scipy",
    "librosa",
    "soundfile",
    "soxr",
)
PACKAGE = "machine-sound-asd"


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    bundle: Bundle
    threshold: Threshold
    calibration_scores: np.ndarray  # (n_calibration_clips,): each clip scored with its machine ID
    max_onnx_difference: float
    # Fused bundles only: each clip scored without a machine ID (the model-wide threshold's); raw scores.
    calibration_scores_wide: np.ndarray | None = None
    raw_scores: RawScores | None = None
    parity: Parity | None = None  # int8 exports: the gate's figures


def versions() -> dict[str, str]:
    """Versions of the libraries that shaped the model and its features, and of this package."""
    found = {"python": platform.python_version()}
    for name in (*_VERSIONED, PACKAGE):
        found[name] = "not installed"
        # TensorFlow ships as "tensorflow" or as "tensorflow-cpu"; either is the library.
        for distribution in (name, "tensorflow-cpu") if name == "tensorflow" else (name,):
            try:
                found[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return found


def score_clips(
    detector: Detector,
    paths: Sequence[Path],
    *,
    channel: Channel = 0,
    machine_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Score]:
    """Each clip's `Score` through the deployed path, `Detector.score_file` (with its machine ID)."""
    scored = []
    for i, path in enumerate(paths):
        machine_id = None if machine_ids is None else machine_ids[i]
        scored.append(detector.score_file(path, channel=channel, machine_id=machine_id))
        if progress is not None:
            progress(1)
    return scored


def score_paths(
    detector: Detector,
    paths: Sequence[Path],
    *,
    channel: Channel = 0,
    machine_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Clip scores, shape (len(paths),), through the deployed path, `Detector.score_file`.

    `machine_ids` (one per path) score each clip as a request naming its ID;
    only a fused bundle's scores depend on it.
    """
    scored = score_clips(detector, paths, channel=channel, machine_ids=machine_ids, progress=progress)
    return np.asarray([s.score for s in scored], dtype=np.float64).reshape(len(paths))


@dataclass(frozen=True)
class Calibration:
    """Normal clips' scores for the threshold, or the clips the exported model must score for them.

    `scores_from="holdout"`: `paths` are held-out clips, scored at export
    through the exported folder. `"cross_fit"`: `scores` (one per path) are
    out-of-fold scores already computed by the fold models; with the envelope
    scorer `raw` holds the fold models' raw scores instead, which fix the
    standardisation before they are fused. `machine_ids` (one per path) give
    each ID its own threshold.
    """

    paths: Sequence[Path]
    machine_ids: Sequence[str]
    scores_from: ScoresFrom = "holdout"
    scores: np.ndarray | None = None
    folds: int | None = None
    raw: RawScores | None = None


@dataclass(frozen=True)
class Candidate:
    """What makes a detector folder besides its threshold (shared by the fold models and the export)."""

    arch: Arch
    params: FeatureParams
    frames: int
    hop: int
    normalizer: Normalizer
    machine_type: str
    machine_ids: Sequence[str]
    pooling: Pooling = "mean"
    pooling_param: float | None = None
    # fused: the cae+envelope scorer. `envelopes` are the exported model's Gaussians; a fold
    # model's candidate has none (its fold's Gaussians score its held-out clips beside it).
    envelopes: Envelopes | None = None
    fused: bool = False
    fusion: Fusion = "mean"
    spectrum: SpectrumBands | None = None  # the spectrum scorer's bands, with that scorer
    # int8: every exported graph, the fold models' too, is quantized before it scores a clip.
    precision: Precision = "fp32"

    @property
    def spectrum_frames(self) -> tuple[int, int] | None:
        """(n_fft, hop) of the spectrum scorer: what the calibration clips' scores must keep."""
        return None if self.spectrum is None else (self.spectrum.n_fft, self.spectrum.hop)

    def cae_scoring(self) -> Scoring | None:
        """The CAE's pooling alone; None for the mean, so a default export writes no `scoring` section."""
        if self.pooling == "mean":
            return None
        return Scoring(pooling=self.pooling, pooling_param=self.pooling_param)

    def bundle(
        self,
        name: str,
        model_path: Path,
        threshold: Threshold,
        training: Training,
        fingerprint: Fingerprint | None = None,
        scoring: Scoring | None = None,
        precision: Precision = "fp32",
    ) -> Bundle:
        return Bundle(
            name=name,
            machine_type=self.machine_type,
            machine_ids=list(self.machine_ids),
            # The filter bank travels with the model: the service need not rebuild it.
            features=Features.from_params(self.params),
            patching=Patching(frames=self.frames, hop=self.hop),
            normalization=Normalization(mean=self.normalizer.mean.tolist(), std=self.normalizer.std.tolist()),
            model=OnnxModel(
                sha256=sha256_of(model_path),
                arch=self.arch,
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
                opset=OPSET,
                precision=precision,
            ),
            threshold=threshold,
            training=training,
            versions=versions(),
            fingerprint=fingerprint,
            scoring=scoring,
        )


def _placeholder(quantile: float) -> Threshold:
    # Scoring through `Detector` needs a loadable folder before the threshold is known.
    return Threshold(
        value=1.0,
        quantile=quantile,
        gamma=GammaFit(shape=1.0, loc=0.0, scale=1.0),
        n_calibration_clips=1,
        empirical_false_alarm_rate=0.0,
    )


def score_with_model(
    model: keras.Model,
    candidate: Candidate,
    paths: Sequence[Path],
    *,
    training: Training,
    channel: Channel,
    progress: Callable[[int], None] | None = None,
    quantize_inputs: np.ndarray | None = None,
) -> np.ndarray:
    """Scores of `paths`, shape (len(paths),), through `model` exported to a scratch folder for `Detector`.

    The fold models of a cross-fit score their held-out clips this way, so
    the calibration scores come from the deployed path, as the final model's.
    The scores are the CAE's pooled errors (`Candidate.cae_scoring`). An int8
    candidate's graph is quantized first, with ranges from `quantize_inputs`.
    """
    return raw_scores_with_model(
        model,
        candidate,
        paths,
        machine_ids=None,
        envelopes=None,
        training=training,
        channel=channel,
        progress=progress,
        quantize_inputs=quantize_inputs,
    ).cae


def raw_scores_with_model(
    model: keras.Model,
    candidate: Candidate,
    paths: Sequence[Path],
    *,
    machine_ids: Sequence[str] | None,
    envelopes: Envelopes | None,
    training: Training,
    channel: Channel,
    progress: Callable[[int], None] | None = None,
    quantize_inputs: np.ndarray | None = None,
) -> RawScores:
    """`score_with_model`'s pooled CAE errors and, with `envelopes` (a fold's), the envelope distances.

    The distances come from the mean levels `Detector.score` computes (`Score.band_db`), as in the service.
    """
    work = Path(tempfile.mkdtemp(prefix=".fold-"))
    try:
        model_path = work / MODEL_FILE
        to_onnx(model, model_path, arch=candidate.arch)
        candidate.bundle(
            work.name, model_path, _placeholder(DEFAULT_QUANTILE), training, scoring=candidate.cae_scoring()
        ).write(work)
        if candidate.precision == "int8":
            quantize_folder(work, _needed(quantize_inputs))
        scored = _score_in(
            work, paths, channel=channel, progress=progress, spectrum=candidate.spectrum_frames
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _raw(scored, machine_ids, envelopes)


def _needed(quantize_inputs: np.ndarray | None) -> np.ndarray:
    if quantize_inputs is None:
        raise ExportError("an int8 export needs training patches for the activation ranges")
    return quantize_inputs


def _score_in(
    folder: Path,
    paths: Sequence[Path],
    *,
    channel: Channel,
    progress: Callable[[int], None] | None,
    spectrum: tuple[int, int] | None = None,
) -> list[Score]:
    """`score_clips` with the detector in `folder`; a clip read before that fails now is an ExportError.

    `spectrum` as in `Detector`: the scores keep each clip's long-term spectrum.
    """
    try:
        return score_clips(Detector(folder, spectrum=spectrum), paths, channel=channel, progress=progress)
    except AudioError as error:
        raise ExportError(f"a calibration clip became unreadable during export: {error}") from None


def _raw(
    scored: Sequence[Score], machine_ids: Sequence[str] | None, envelopes: Envelopes | None
) -> RawScores:
    cae = np.asarray([s.score for s in scored], dtype=np.float64).reshape(len(scored))
    if envelopes is None:
        return RawScores(cae=cae)
    assert machine_ids is not None
    levels = np.asarray([s.band_db for s in scored], dtype=np.float64)
    own, wide = envelopes.distances(levels, machine_ids)
    if envelopes.spectrum is None:
        return RawScores(cae=cae, envelope_own=own, envelope_wide=wide)
    if any(s.spectrum_db is None for s in scored):
        raise ExportError("the spectrum scorer's calibration scores lack the clips' spectra")
    spectra = np.asarray([s.spectrum_db for s in scored], dtype=np.float64)
    spectrum_own, spectrum_wide = envelopes.spectrum.distances(spectra, machine_ids)
    return RawScores(
        cae=cae, envelope_own=own, envelope_wide=wide, spectrum_own=spectrum_own, spectrum_wide=spectrum_wide
    )


def _band_db(score: Score) -> np.ndarray:
    """A clip's mean level per mel band, which `Detector.score` always keeps."""
    assert score.band_db is not None
    return score.band_db


def fit_thresholds(
    scores: np.ndarray,
    machine_ids: Sequence[str],
    *,
    quantile: float,
    calibration: Calibration,
    wide_scores: np.ndarray | None = None,
) -> Threshold:
    """The model-wide threshold of all `scores` and each ID's own (IDs with `MIN_ID_CLIPS` scores or more).

    `wide_scores` (fused bundles): the same clips scored without a machine ID,
    for the model-wide threshold, which serves requests that name none.
    """
    ids = np.asarray(machine_ids)
    overall = calibrate(scores if wide_scores is None else wide_scores, quantile=quantile)
    per_id = {
        mid: calibrate(scores[ids == mid], quantile=quantile)
        for mid in sorted(set(machine_ids))
        if int(np.sum(ids == mid)) >= MIN_ID_CLIPS
    }
    return Threshold(
        **overall.model_dump(),
        scores_from=calibration.scores_from,
        folds=calibration.folds,
        per_id=per_id or None,
    )


def export_detector(
    model: keras.Model,
    *,
    out: Path,
    candidate: Candidate,
    check_inputs: np.ndarray,
    calibration: Calibration,
    channel: Channel,
    quantile: float,
    training: Training,
    fingerprint: Fingerprint | None = None,
    progress: Callable[[int], None] | None = None,
    quantize_inputs: np.ndarray | None = None,
) -> ExportResult:
    """Write the detector folder `out` atomically (see module doc).

    `check_inputs` are model inputs in the graph's layout, e.g. validation
    patches (N, n_mels, frames, 1) or (N, frames * n_mels), to compare ONNX
    with Keras on; `quantize_inputs`, in the same layout, are the training
    patches an int8 candidate's activation ranges come from.
    """
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    try:
        model_path = work / MODEL_FILE
        to_onnx(model, model_path, arch=candidate.arch)
        difference = check_onnx(model, model_path, check_inputs)
        ids = calibration.machine_ids
        held_out = calibration.raw is None and calibration.scores is None
        scored: list[Score] | None = None
        parity = None
        if held_out or candidate.precision == "int8":
            candidate.bundle(
                out.name, model_path, _placeholder(quantile), training, scoring=candidate.cae_scoring()
            ).write(work)
            scored = _score_in(
                work,
                calibration.paths,
                channel=channel,
                progress=progress,
                spectrum=candidate.spectrum_frames,
            )
        if candidate.precision == "int8":
            assert scored is not None
            quantize_folder(work, _needed(quantize_inputs))
            fp32, scored = (
                scored,
                _score_in(
                    work,
                    calibration.paths,
                    channel=channel,
                    progress=progress,
                    spectrum=candidate.spectrum_frames,
                ),
            )
            parity = check_parity(
                [cae_score(s) for s in fp32],
                [cae_score(s) for s in scored],
                names=[path.name for path in calibration.paths],
            )
        if calibration.raw is not None:
            raw = calibration.raw
        elif calibration.scores is not None:
            raw = RawScores(cae=np.asarray(calibration.scores, dtype=np.float64))
        else:
            assert scored is not None
            raw = _raw(scored, ids, candidate.envelopes)
        scores, wide = raw.cae, None
        scoring = candidate.cae_scoring()
        if candidate.fused:
            scoring = fit_scoring(
                raw,
                ids,
                envelopes=candidate.envelopes,
                pooling=candidate.pooling,
                pooling_param=candidate.pooling_param,
                scores_from=calibration.scores_from,
                fusion=candidate.fusion,
                spectrum=candidate.spectrum,
            )
            if not held_out:  # out-of-fold: the fold models are gone, their raw scores remain
                scores, wide = fused_scores(raw, ids, scoring)
            else:  # held out: rescored by the exported folder itself, as the service will score them
                assert scored is not None
                placeholder = _placeholder(quantile)
                candidate.bundle(
                    out.name,
                    model_path,
                    placeholder,
                    training,
                    scoring=scoring,
                    precision=candidate.precision,
                ).write(work)
                final = Detector(work)
                scores = np.asarray(
                    [
                        final.combine(
                            s.patch_errors, _band_db(s), machine_id=mid, spectrum_db=s.spectrum_db
                        ).score
                        for s, mid in zip(scored, ids, strict=True)
                    ],
                    dtype=np.float64,
                )
                wide = np.asarray(
                    [
                        final.combine(s.patch_errors, _band_db(s), spectrum_db=s.spectrum_db).score
                        for s in scored
                    ],
                    dtype=np.float64,
                )
        threshold = fit_thresholds(scores, ids, quantile=quantile, calibration=calibration, wide_scores=wide)
        bundle = candidate.bundle(
            out.name,
            model_path,
            threshold,
            training,
            fingerprint,
            scoring=scoring,
            precision=candidate.precision,
        )
        bundle.write(work)
        Detector(work)  # the folder as the service will load it: hash, graph shape, schema
        replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(
        folder=out,
        bundle=bundle,
        threshold=threshold,
        calibration_scores=scores,
        max_onnx_difference=difference,
        calibration_scores_wide=wide,
        raw_scores=raw if candidate.fused else None,
        parity=parity,
    )

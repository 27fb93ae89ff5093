"""Export a trained Keras autoencoder as a detector folder the service can load.

`export_detector` writes, into a temporary folder beside `out`:

1. `model.onnx` (tf2onnx, opset 17, dynamic batch axis, input "log_mel",
   output "reconstruction");
2. checks that onnxruntime reproduces Keras on real inputs (validation
   patches) to `ONNX_TOLERANCE`, else `ExportError`;
3. scores the held-out normal clips through `service.detector.Detector` on
   that folder (the deployed scoring path), or takes the out-of-fold scores
   of a cross-fit (`Calibration`), and fits the gamma thresholds: the
   model-wide one and one per machine ID;
4. writes `threshold.json` (`service.bundle.Bundle`) with the hash of the
   model and the training audio's input fingerprint, and loads the result
   once more with `Detector` as the service would.

Only then is the temporary folder renamed to `out` (replacing an earlier
model there); on any failure it is removed, so `out` never holds a
half-written model.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.audio import AudioError, Channel, read_audio
from service.bundle import (
    MODEL_FILE,
    Bundle,
    Features,
    GammaFit,
    Normalization,
    OnnxModel,
    Patching,
    ScoresFrom,
    Threshold,
    Training,
    sha256_of,
)
from service.detector import Detector
from service.features import FeatureParams
from service.inputcheck import Fingerprint
from training.dataset import Arch, Normalizer
from training.model import INPUT_NAME, OUTPUT_NAME
from training.threshold import DEFAULT_QUANTILE, calibrate

OPSET = 17
ONNX_TOLERANCE = 1e-4
MAX_CHECK_PATCHES = 1024
# Fewer calibration clips of an ID than this and it uses the model-wide threshold.
MIN_ID_CLIPS = 10

_VERSIONED = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "scipy", "librosa", "soundfile", "soxr")
PACKAGE = "machine-sound-asd"


class ExportError(Exception):
    """The model could not be exported faithfully; nothing was written to the output folder."""


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    bundle: Bundle
    threshold: Threshold
    calibration_scores: np.ndarray  # (n_calibration_clips,)
    max_onnx_difference: float


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


def to_onnx(model, path: Path, *, arch: Arch) -> None:  # model: keras.Model
    """Convert with a dynamic batch axis; the graph's input is `INPUT_NAME`, output `OUTPUT_NAME`."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    # tf2onnx names the output after Keras internals ("reconstruction" or
    # "output_0" depending on versions); rename it so the bundle can name it.
    old = proto.graph.output[0].name
    if old != OUTPUT_NAME:
        for node in proto.graph.node:
            node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
            node.input[:] = [OUTPUT_NAME if i == old else i for i in node.input]
        proto.graph.output[0].name = OUTPUT_NAME
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # instead of tf2onnx's "unk__N"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    del arch  # both architectures convert the same way; kept for symmetry with the bundle


def check_onnx(model, path: Path, inputs: np.ndarray) -> float:
    """Largest absolute difference between Keras and onnxruntime on `inputs`; ExportError above tolerance."""
    import onnxruntime as ort

    batch = np.ascontiguousarray(inputs[:MAX_CHECK_PATCHES], dtype=np.float32)
    if len(batch) == 0:
        raise ExportError("no patches to compare the ONNX model with Keras on")
    expected = np.asarray(model.predict(batch, batch_size=256, verbose=0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from Keras {expected.shape}")
    difference = float(np.max(np.abs(actual - expected)))
    if not difference <= ONNX_TOLERANCE:  # also catches NaN
        raise ExportError(
            f"the ONNX model differs from Keras by {difference:.3g} on validation patches "
            f"(tolerance {ONNX_TOLERANCE:g}); nothing was exported"
        )
    return difference


def score_paths(
    detector: Detector,
    paths: Sequence[Path],
    *,
    channel: Channel = 0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Clip scores, shape (len(paths),), through the deployed path: read_audio -> Detector.score."""
    scores = np.empty(len(paths), dtype=np.float64)
    for i, path in enumerate(paths):
        clip = read_audio(path, sample_rate=detector.params.sample_rate, channel=channel)
        scores[i] = detector.score(clip.samples).score
        if progress is not None:
            progress(1)
    return scores


@dataclass(frozen=True)
class Calibration:
    """Normal clips' scores for the threshold, or the clips the exported model must score for them.

    `scores_from="holdout"`: `paths` are held-out clips, scored at export
    through the exported folder. `"cross_fit"`: `scores` (one per path) are
    out-of-fold scores already computed by the fold models. `machine_ids`
    (one per path) give each ID its own threshold.
    """

    paths: Sequence[Path]
    machine_ids: Sequence[str]
    scores_from: ScoresFrom = "holdout"
    scores: np.ndarray | None = None
    folds: int | None = None


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

    def bundle(self, name: str, model_path: Path, threshold: Threshold, training: Training,
               fingerprint: Fingerprint | None = None) -> Bundle:
        return Bundle(
            name=name,
            machine_type=self.machine_type,
            machine_ids=list(self.machine_ids),
            # The filter bank travels with the model: the service need not rebuild it.
            features=Features.from_params(self.params),
            patching=Patching(frames=self.frames, hop=self.hop),
            normalization=Normalization(mean=self.normalizer.mean.tolist(), std=self.normalizer.std.tolist()),
            model=OnnxModel(
                sha256=sha256_of(model_path), arch=self.arch, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                opset=OPSET,
            ),
            threshold=threshold,
            training=training,
            versions=versions(),
            fingerprint=fingerprint,
        )


def _placeholder(quantile: float) -> Threshold:
    # Scoring through `Detector` needs a loadable folder before the threshold is known.
    return Threshold(
        value=1.0, quantile=quantile, gamma=GammaFit(shape=1.0, loc=0.0, scale=1.0), n_calibration_clips=1,
        empirical_false_alarm_rate=0.0,
    )


def score_with_model(
    model,  # keras.Model
    candidate: Candidate,
    paths: Sequence[Path],
    *,
    training: Training,
    channel: Channel,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Scores of `paths` through `model` exported to a scratch folder and loaded by `Detector`.

    The fold models of a cross-fit score their held-out clips this way, so
    the calibration scores come from the deployed path, as the final model's.
    """
    work = Path(tempfile.mkdtemp(prefix=".fold-"))
    try:
        model_path = work / MODEL_FILE
        to_onnx(model, model_path, arch=candidate.arch)
        candidate.bundle(work.name, model_path, _placeholder(DEFAULT_QUANTILE), training).write(work)
        try:
            return score_paths(Detector(work), paths, channel=channel, progress=progress)
        except AudioError as error:
            raise ExportError(f"a calibration clip became unreadable: {error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fit_thresholds(
    scores: np.ndarray, machine_ids: Sequence[str], *, quantile: float, calibration: Calibration
) -> Threshold:
    """The model-wide threshold of all `scores` and each ID's own (IDs with `MIN_ID_CLIPS` scores or more)."""
    ids = np.asarray(machine_ids)
    overall = calibrate(scores, quantile=quantile)
    per_id = {
        mid: calibrate(scores[ids == mid], quantile=quantile)
        for mid in sorted(set(machine_ids))
        if int(np.sum(ids == mid)) >= MIN_ID_CLIPS
    }
    return Threshold(
        **overall.model_dump(), scores_from=calibration.scores_from, folds=calibration.folds, per_id=per_id or None
    )


def export_detector(
    model,  # keras.Model
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
) -> ExportResult:
    """Write the detector folder `out` atomically (see module doc).

    `check_inputs` are model inputs in the graph's layout, e.g. validation
    patches (N, n_mels, frames, 1) or (N, frames * n_mels), to compare ONNX
    with Keras on.
    """
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    try:
        model_path = work / MODEL_FILE
        to_onnx(model, model_path, arch=candidate.arch)
        difference = check_onnx(model, model_path, check_inputs)
        if calibration.scores is not None:
            scores = np.asarray(calibration.scores, dtype=np.float64)
        else:
            candidate.bundle(out.name, model_path, _placeholder(quantile), training).write(work)
            try:
                scores = score_paths(Detector(work), calibration.paths, channel=channel, progress=progress)
            except AudioError as error:
                raise ExportError(f"a calibration clip became unreadable during export: {error}") from None
        threshold = fit_thresholds(scores, calibration.machine_ids, quantile=quantile, calibration=calibration)
        bundle = candidate.bundle(out.name, model_path, threshold, training, fingerprint)
        bundle.write(work)
        Detector(work)  # the folder as the service will load it: hash, graph shape, schema
        _replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(
        folder=out, bundle=bundle, threshold=threshold, calibration_scores=scores, max_onnx_difference=difference
    )


def _check_replaceable(out: Path) -> None:
    # Replacing an earlier model is the normal retraining flow; deleting a
    # folder that holds anything else would be a nasty surprise.
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if any(out.iterdir()) and not (out / "threshold.json").is_file():
        raise ExportError(f"{out} exists, is not empty and holds no model; choose another --out")


def _replace(work: Path, out: Path) -> None:
    """Rename `work` to `out`; an existing `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    try:
        work.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""Export a trained Keras autoencoder as a detector folder the service can load.

`export_detector` writes, into a temporary folder beside `out`:

1. `model.onnx` (tf2onnx, opset 17, dynamic batch axis, input "log_mel",
   output "reconstruction");
2. checks that onnxruntime reproduces Keras on real inputs (validation
   patches) to `ONNX_TOLERANCE`, else `ExportError`;
3. scores the held-out normal clips through `service.detector.Detector` on
   that folder (the deployed scoring path), or takes the out-of-fold scores
   of a cross-fit (`Calibration`), and fits the gamma thresholds: the
   model-wide one and one per machine ID. With the envelope scorer
   (`Candidate.envelopes`) those held-out scores first give each scorer's
   per-ID standardisation (`fit_scoring`), and the thresholds are fitted to
   the fused scores of the same clips: per ID as a request naming the ID is
   scored, model-wide as one without;
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
    EnvelopeModel,
    Features,
    GammaFit,
    Normalization,
    OnnxModel,
    Patching,
    Pooling,
    ScoresFrom,
    Scoring,
    ScoringEntry,
    Standardisation,
    Threshold,
    Training,
    sha256_of,
)
from service.detector import Detector, Score
from service.features import FeatureParams
from service.inputcheck import Fingerprint
from service.scorers import FUSION_OFFSET, Gaussian, coarse_bands, fit_gaussian, fuse
from training.dataset import Arch, Normalizer
from training.model import INPUT_NAME, OUTPUT_NAME
from training.threshold import DEFAULT_QUANTILE, calibrate

OPSET = 17
ONNX_TOLERANCE = 1e-4
MAX_CHECK_PATCHES = 1024
# Fewer calibration clips of an ID than this and it uses the model-wide threshold.
MIN_ID_CLIPS = 10

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


class ExportError(Exception):
    """The model could not be exported faithfully; nothing was written to the output folder."""


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


def score_clips(
    detector: Detector,
    paths: Sequence[Path],
    *,
    channel: Channel = 0,
    machine_ids: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Score]:
    """Each clip's `Score` through the deployed path: read_audio -> Detector.score (with its machine ID)."""
    scored = []
    for i, path in enumerate(paths):
        clip = read_audio(path, sample_rate=detector.params.sample_rate, channel=channel)
        machine_id = None if machine_ids is None else machine_ids[i]
        scored.append(detector.score(clip.samples, machine_id=machine_id))
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
    """Clip scores, shape (len(paths),), through the deployed path: read_audio -> Detector.score.

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
    model,  # keras.Model
    candidate: Candidate,
    paths: Sequence[Path],
    *,
    training: Training,
    channel: Channel,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Scores of `paths`, shape (len(paths),), through `model` exported to a scratch folder for `Detector`.

    The fold models of a cross-fit score their held-out clips this way, so
    the calibration scores come from the deployed path, as the final model's.
    The scores are the CAE's pooled errors (`Candidate.cae_scoring`).
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
    ).cae


def raw_scores_with_model(
    model,  # keras.Model
    candidate: Candidate,
    paths: Sequence[Path],
    *,
    machine_ids: Sequence[str] | None,
    envelopes: Envelopes | None,
    training: Training,
    channel: Channel,
    progress: Callable[[int], None] | None = None,
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
        try:
            scored = score_clips(Detector(work), paths, channel=channel, progress=progress)
        except AudioError as error:
            raise ExportError(f"a calibration clip became unreadable: {error}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _raw(scored, machine_ids, envelopes)


def _raw(
    scored: Sequence[Score], machine_ids: Sequence[str] | None, envelopes: Envelopes | None
) -> RawScores:
    cae = np.asarray([s.score for s in scored], dtype=np.float64).reshape(len(scored))
    if envelopes is None:
        return RawScores(cae=cae)
    assert machine_ids is not None
    levels = np.asarray([s.band_db for s in scored], dtype=np.float64)
    own, wide = envelopes.distances(levels, machine_ids)
    return RawScores(cae=cae, envelope_own=own, envelope_wide=wide)


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
    raw: RawScores, machine_ids: Sequence[str], *, candidate: Candidate, scores_from: ScoresFrom
) -> Scoring:
    """The fused `scoring` section: `candidate.envelopes` and each scorer's standardisation from `raw`.

    `raw` must be held-out scores (a holdout's validation clips, a cross-fit's
    out-of-fold scores): in-sample scores would make the model look tighter
    than it is on new clips. Model-wide: all clips' CAE scores and model-wide
    envelope distances; an ID with its own Gaussian: its clips' CAE scores and
    own-Gaussian distances.
    """
    envelopes = candidate.envelopes
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
        pooling=candidate.pooling,
        pooling_param=candidate.pooling_param,
        scorers=["cae", "envelope"],
        band_edges=list(envelopes.edges),
        offset=FUSION_OFFSET,
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

    def fused(rows: np.ndarray, envelope: np.ndarray, entry: ScoringEntry) -> np.ndarray:
        cae, env = entry.standardisation["cae"], entry.standardisation["envelope"]
        return np.asarray(
            fuse(
                [(raw.cae[rows] - cae.mean) / cae.std, (envelope[rows] - env.mean) / env.std],
                offset=scoring.offset,
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
        ids = calibration.machine_ids
        scored: list[Score] | None = None
        if calibration.raw is not None:
            raw = calibration.raw
        elif calibration.scores is not None:
            raw = RawScores(cae=np.asarray(calibration.scores, dtype=np.float64))
        else:
            candidate.bundle(
                out.name, model_path, _placeholder(quantile), training, scoring=candidate.cae_scoring()
            ).write(work)
            try:
                scored = score_clips(Detector(work), calibration.paths, channel=channel, progress=progress)
            except AudioError as error:
                raise ExportError(f"a calibration clip became unreadable during export: {error}") from None
            raw = _raw(scored, ids, candidate.envelopes)
        scores, wide = raw.cae, None
        scoring = candidate.cae_scoring()
        if candidate.fused:
            scoring = fit_scoring(raw, ids, candidate=candidate, scores_from=calibration.scores_from)
            if scored is None:  # out-of-fold: the fold models are gone, their raw scores remain
                scores, wide = fused_scores(raw, ids, scoring)
            else:  # held out: rescored by the exported folder itself, as the service will score them
                placeholder = _placeholder(quantile)
                candidate.bundle(out.name, model_path, placeholder, training, scoring=scoring).write(work)
                final = Detector(work)
                scores = np.asarray(
                    [
                        final.combine(s.patch_errors, s.band_db, machine_id=mid).score
                        for s, mid in zip(scored, ids, strict=True)
                    ],
                    dtype=np.float64,
                )
                wide = np.asarray(
                    [final.combine(s.patch_errors, s.band_db).score for s in scored], dtype=np.float64
                )
        threshold = fit_thresholds(scores, ids, quantile=quantile, calibration=calibration, wide_scores=wide)
        bundle = candidate.bundle(out.name, model_path, threshold, training, fingerprint, scoring=scoring)
        bundle.write(work)
        Detector(work)  # the folder as the service will load it: hash, graph shape, schema
        _replace(work, out)
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

"""One process, one clip at a time: our scoring path against the naive one.

Ours is what the service runs per request (`service.scoring.score_upload`:
`read_audio` -> `Detector.features` -> `Detector.model_inputs` ->
onnxruntime -> per-patch errors -> segments). Each clip is scored twice:
once taken apart to time the stages (decode = `Detector.read`, features =
log-mel + standardisation + patch cutting, inference =
`Detector.reconstruct`), once whole (`score_upload`, which also computes the
errors, segments and the answer) for the total.

`measure_all` (what `bench.run` uses) runs the pipelines clip by clip,
interleaved, so that a drifting machine load falls on all alike.

The naive pipeline is what a user would write with the usual libraries on
the same model: `librosa.load` -> `librosa.feature.melspectrogram` ->
`librosa.power_to_db` -> standardise -> patches -> Keras `model.predict`.
The peer is the competent user's version of it: the same librosa steps, then
the exported fp32 `model.onnx` in onnxruntime with its default
`SessionOptions` (`bench.detector.onnx_default_predict`) instead of Keras.
Both are timed in one pass, stage by stage. librosa compiles numba code and
Keras traces its predict function on first use; a warm-up on a few clips
pays that before timing, and its duration is reported on its own.

Both compute the mean patch error; a fused bundle (cae+envelope) scores
otherwise, so they are compared with ours' CAE component (`cae_scores`).

Every time is taken twice: wall clock (`perf_counter`, what a caller waits)
and process CPU time (`process_time`, all threads of this process), which
moves far less than the wall clock when other jobs share the machine.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.detector import Clip

if TYPE_CHECKING:
    from service.detector import Detector, Score
    from service.schemas import ScoreResult

STAGES = ("decode", "features", "inference", "total")


@dataclass
class Timings:
    """Per-clip times in ms, wall clock and CPU, for each stage."""

    wall: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})

    def add(self, stage: str, wall_s: float, cpu_s: float) -> None:
        self.wall[stage].append(wall_s * 1000)
        self.cpu[stage].append(cpu_s * 1000)


@dataclass
class PipelineResult:
    name: str
    timings: Timings
    scores: list[float]
    clip_seconds: float  # audio seconds scored per pass
    warmup_s: float = 0.0  # first calls (compilation, tracing, first-run allocations)
    cae_scores: list[float] = field(default_factory=list)  # each score's CAE component (unfused)

    @property
    def n_clips(self) -> int:
        return len(self.scores)

    def median(self, stage: str, *, cpu: bool = False) -> float:
        values = (self.timings.cpu if cpu else self.timings.wall)[stage]
        return float(np.median(values)) if values else float("nan")

    def p95(self, stage: str, *, cpu: bool = False) -> float:
        values = (self.timings.cpu if cpu else self.timings.wall)[stage]
        return float(np.percentile(values, 95)) if values else float("nan")

    @property
    def clips_per_second(self) -> float:
        """Sequential throughput of one process: clips / summed total wall time."""
        total_s = sum(self.timings.wall["total"]) / 1000
        return self.n_clips / total_s if total_s > 0 else float("nan")

    @property
    def real_time_factor(self) -> float:
        """Audio seconds scored per wall second (median clip)."""
        per_clip = self.clip_seconds / max(1, self.n_clips)
        return per_clip / (self.median("total") / 1000)

    def stage(self, stage: str) -> dict[str, float]:
        """Median and p95 of `stage`, wall clock and CPU, in ms."""
        return {
            "median_ms": self.median(stage),
            "p95_ms": self.p95(stage),
            "cpu_median_ms": self.median(stage, cpu=True),
            "cpu_p95_ms": self.p95(stage, cpu=True),
        }

    def to_dict(self) -> dict[str, Any]:
        """The figures the results keep (JSON): every stage's `stage`, throughput and warm-up."""
        return {
            "name": self.name,
            "n_clips": self.n_clips,
            "stages": {stage: self.stage(stage) for stage in STAGES},
            "clips_per_second": self.clips_per_second,
            "real_time_factor": self.real_time_factor,
            "warmup_s": self.warmup_s,
        }


class _Clock:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


def ours_staged(detector: Detector, clip: Clip, timings: Timings) -> None:
    """Decode, features (log-mel, standardisation, patches) and inference of one clip, each timed."""
    clock = _Clock()
    decoded = detector.read(clip.data)
    timings.add("decode", *clock.lap())
    batch, _ = detector.model_inputs(detector.features(decoded.samples))
    timings.add("features", *clock.lap())
    detector.reconstruct(batch)
    timings.add("inference", *clock.lap())


def ours_total(
    detector: Detector, clip: Clip, timings: Timings, *, model_name: str = "slider"
) -> ScoreResult:
    """The whole request's work (`score_upload`), timed; returns the answer."""
    from service.scoring import score_upload

    clock = _Clock()
    result = score_upload(model_name, detector, clip.data)
    timings.add("total", *clock.lap())
    return result


def cae_component(result: ScoreResult | Score) -> float:
    """The answer's (or `Detector.score_file`'s) CAE score (pooled patch error), which a fused score is built from."""
    return result.components["cae"] if result.components else result.score


def measure_ours(
    detector: Detector, clips: Sequence[Clip], *, model_name: str = "slider", warmup: int = 3
) -> PipelineResult:
    """Our pipeline on each clip: a staged pass, then `score_upload` end to end."""
    started = time.perf_counter()
    for clip in clips[:warmup]:
        ours_total(detector, clip, Timings(), model_name=model_name)
    warmup_s = time.perf_counter() - started
    timings = Timings()
    for clip in clips:
        ours_staged(detector, clip, timings)
    answers = [ours_total(detector, clip, timings, model_name=model_name) for clip in clips]
    return PipelineResult(
        name="ours",
        timings=timings,
        scores=[a.score for a in answers],
        clip_seconds=sum(c.seconds for c in clips),
        warmup_s=warmup_s,
        cae_scores=[cae_component(a) for a in answers],
    )


@dataclass
class Measured:
    """What `measure_all` timed: ours, the naive pipeline, and the peer and other settings when asked."""

    ours: PipelineResult
    naive: PipelineResult
    peer: PipelineResult | None = None
    other: PipelineResult | None = None


def measure_all(
    detector: Detector,
    recipe: NaiveRecipe,
    predict: Callable[[np.ndarray], np.ndarray],
    clips: Sequence[Clip],
    *,
    model_name: str = "slider",
    warmup: int = 3,
    other_detector: Detector | None = None,
    peer_predict: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Measured:
    """Ours, the naive pipeline and the optional ones clip by clip, interleaved, on the same machine.

    On a shared machine the load drifts over a run; timing all of one
    pipeline and then all of the other would put the drift into their ratio.
    `peer_predict` runs the naive pipeline's librosa steps with this model
    instead of `predict` (the peer); `other_detector` (the same model with
    other session settings) gets its own whole `score_upload` of each clip.
    """

    def ours(clip: Clip, timings: Timings) -> tuple[float, float]:
        ours_staged(detector, clip, timings)
        answer = ours_total(detector, clip, timings, model_name=model_name)
        return answer.score, cae_component(answer)

    def librosa_with(
        model: Callable[[np.ndarray], np.ndarray],
    ) -> Callable[[Clip, Timings], tuple[float, float]]:
        def run(clip: Clip, timings: Timings) -> tuple[float, float]:
            score = naive_score(clip.data, recipe, model, timings)
            return score, score  # the mean patch error is all it computes

        return run

    runs: dict[str, Callable[[Clip, Timings], tuple[float, float]]] = {
        "ours": ours,
        "naive": librosa_with(predict),
    }
    if peer_predict is not None:
        runs["peer"] = librosa_with(peer_predict)
    if other_detector is not None:

        def other(clip: Clip, timings: Timings) -> tuple[float, float]:
            answer = ours_total(other_detector, clip, timings, model_name=model_name)
            return answer.score, cae_component(answer)

        runs["ours (other settings)"] = other
    warm = {}
    for name, run in runs.items():
        started = time.perf_counter()
        for clip in clips[:warmup]:
            run(clip, Timings())
        warm[name] = time.perf_counter() - started
    timings = {name: Timings() for name in runs}
    scores: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for clip in clips:
        for name, run in runs.items():
            scores[name].append(run(clip, timings[name]))
    seconds = sum(c.seconds for c in clips)
    done = {
        name: PipelineResult(
            name=name,
            timings=timings[name],
            scores=[score for score, _ in scores[name]],
            clip_seconds=seconds,
            warmup_s=warm[name],
            cae_scores=[cae for _, cae in scores[name]],
        )
        for name in runs
    }
    return Measured(
        ours=done["ours"],
        naive=done["naive"],
        peer=done.get("peer"),
        other=done.get("ours (other settings)"),
    )


def agreement(
    measured: Measured, reference: Sequence[float], *, librosa_reference: Sequence[float] | None = None
) -> dict[str, float]:
    """The largest relative score differences of a `measure_all`, keyed as the results' checks.

    Ours against `reference` (`reference_scores`) and its other-settings twin
    against ours; the librosa pipelines compute the mean patch error, so they
    are held against ours' CAE component, which it is whether or not the
    bundle fuses scorers. `librosa_reference`: the CAE components of ours'
    path on the weights the librosa pipelines run, when ours runs others (an
    int8 twin); the checks are then keyed `fp32_vs_naive` and `fp32_vs_peer`.
    """
    ours = measured.ours
    checks = {"ours_vs_detector_max_rel_diff": relative_difference(ours.scores, reference)}
    if measured.other is not None:
        checks["ours_one_thread_vs_ours_max_rel_diff"] = relative_difference(
            measured.other.scores, ours.scores
        )
    against, name = (ours.cae_scores, "ours") if librosa_reference is None else (librosa_reference, "fp32")
    for other in (measured.naive, measured.peer):
        if other is not None:
            checks[f"{name}_vs_{other.name}_max_rel_diff"] = relative_difference(against, other.scores)
    return checks


@dataclass(frozen=True)
class NaiveRecipe:
    """What the naive pipeline needs from the exported model's description."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    power: float
    amin: float
    frames: int
    hop: int
    arch: str
    mean: np.ndarray  # (n_mels,)
    std: np.ndarray  # (n_mels,)

    @classmethod
    def from_detector(cls, detector: Detector) -> NaiveRecipe:
        bundle = detector.bundle
        p = detector.params
        return cls(
            sample_rate=p.sample_rate,
            n_fft=p.n_fft,
            hop_length=p.hop_length,
            n_mels=p.n_mels,
            power=p.power,
            amin=p.amin,
            frames=bundle.patching.frames,
            hop=bundle.patching.hop,
            arch=bundle.model.arch,
            mean=np.asarray(bundle.normalization.mean, dtype=np.float32),
            std=np.asarray(bundle.normalization.std, dtype=np.float32),
        )


def naive_score(
    data: bytes,
    recipe: NaiveRecipe,
    predict: Callable[[np.ndarray], np.ndarray],
    timings: Timings | None = None,
) -> float:
    """The pipeline a user would write with librosa and Keras, timed stage by stage."""
    import librosa

    clock = _Clock()
    started = (clock.wall, clock.cpu)
    # mono=False and channel 0: the service's default channel, so the scores are comparable.
    y, sr = librosa.load(io.BytesIO(data), sr=recipe.sample_rate, mono=False)
    if y.ndim > 1:
        y = y[0]
    decode = clock.lap()
    mel = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=recipe.n_fft, hop_length=recipe.hop_length, n_mels=recipe.n_mels, power=recipe.power
    )
    db = librosa.power_to_db(mel, ref=1.0, amin=recipe.amin, top_db=None)
    x = (db - recipe.mean[:, None]) / recipe.std[:, None]
    starts = range(0, x.shape[1] - recipe.frames + 1, recipe.hop)
    patches = np.stack([x[:, s : s + recipe.frames] for s in starts])
    if recipe.arch == "cae":
        batch = patches[..., None]
    else:
        batch = patches.transpose(0, 2, 1).reshape(len(patches), -1)
    batch = batch.astype(np.float32)
    features = clock.lap()
    recon = predict(batch)
    score = float(np.mean((batch - recon) ** 2))
    inference = clock.lap()
    if timings is not None:
        timings.add("decode", *decode)
        timings.add("features", *features)
        timings.add("inference", *inference)
        timings.add("total", clock.wall - started[0], clock.cpu - started[1])
    return score


def measure_naive(
    recipe: NaiveRecipe,
    predict: Callable[[np.ndarray], np.ndarray],
    clips: Sequence[Clip],
    *,
    warmup: int = 3,
) -> PipelineResult:
    started = time.perf_counter()
    for clip in clips[:warmup]:
        naive_score(clip.data, recipe, predict)
    warmup_s = time.perf_counter() - started
    timings = Timings()
    scores = [naive_score(clip.data, recipe, predict, timings) for clip in clips]
    return PipelineResult(
        name="naive",
        timings=timings,
        scores=scores,
        clip_seconds=sum(c.seconds for c in clips),
        warmup_s=warmup_s,
    )


def reference_scores(detector: Detector, clips: Sequence[Clip]) -> list[float]:
    """Scores without the benchmark's code: `Detector.score_file` on each clip's bytes."""
    return [detector.score_file(c.data).score for c in clips]


def relative_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """Largest |a - b| / |b| over the pairs."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12))) if x.size else float("nan")

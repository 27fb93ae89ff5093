"""fp32 against int8: the bench's detector through the project's own int8 path, timed side by side.

`quantize` runs `training.quantize.quantize_detector` (what `asd-train
quantize MODEL NORMAL_DIR --out NEW` runs) on the exported fp32 folder, with
the synthetic training clips as NORMAL_DIR: the activation ranges, the
parity gate and the refitted thresholds all come from them. The gate may
refuse the graph (a model trained for a couple of epochs can score unlike
its int8 twin); the refusal and its reason become the row, as does a
missing quantization dependency.

`compare` decodes each clip once (untimed) and cuts its patches with each
detector, then times on both folders, in turns that swap which goes first from clip
to clip so that a drifting load falls on both alike:

- inference: `Detector.reconstruct` of the clip's patches (onnxruntime);
- score: `Detector.score` of the decoded samples (log-mel, patches,
  inference, errors, pooling and fusion): ours without decode and answer.

The scores compared are the CAE components (`training.quantize.cae_score`,
the pooled patch error), which is what quantization changes; both sessions
get the same onnxruntime threads as ours.

"Ours" elsewhere in the benchmark runs the precision the shipped model has
(`shipped_precision` of `models/slider`): the int8 twin made here when that
is int8 and the project's path made one (`ours_folder`), else the fp32
folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.detector import Clip
from bench.inprocess import PipelineResult, Timings, relative_difference

if TYPE_CHECKING:
    from service.detector import Detector

STAGES = ("inference", "score")
PRECISIONS = ("fp32", "int8")


def shipped_precision(folder: Path) -> str:
    """`model.precision` of a model folder's threshold.json; "fp32" when there is none to read."""
    from service.bundle import Bundle

    try:
        return Bundle.read(folder).model.precision
    except (OSError, ValueError):
        return "fp32"


def ours_folder(precision: str, fp32_dir: Path, quantized: dict[str, Any] | None) -> Path:
    """The folder the benchmark scores and serves as ours: the int8 twin for "int8" when `quantize` made it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision is one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and quantized is not None and quantized.get("status") == "quantized":
        return Path(quantized["folder"])
    return fp32_dir


def quantize(model_dir: Path, normal_dir: Path, out: Path) -> dict[str, Any]:
    """The int8 twin of `model_dir` in `out`: {"status": "quantized", ...} or why there is none.

    Status "refused" when the project's gate or calibration refuses it,
    "unavailable" when the quantization code cannot be imported; the reason
    is a sentence either way, never a traceback.
    """
    started = time.perf_counter()
    try:
        from training.errors import TrainingError
        from training.quantize import quantize_detector
    except ImportError as error:
        return {
            "status": "unavailable",
            "reason": f"training.quantize cannot be imported ({error}); install the train extra",
        }
    from service.errors import ServiceError

    try:
        result = quantize_detector(model_dir, normal_dir, out, command="python -m bench.run (int8 twin)")
    except ImportError as error:  # onnxruntime.quantization and onnx are imported on first use
        return {
            "status": "unavailable",
            "reason": f"onnxruntime's quantization cannot run here ({error}); install the train extra",
        }
    except (TrainingError, ServiceError) as error:
        return {"status": "refused", "reason": str(error), "seconds": time.perf_counter() - started}
    return {
        "status": "quantized",
        "folder": str(result.folder),
        "parity": result.parity.describe(),
        "n_normal": result.parity.n_clips,  # the training clips the gate compared on
        "parity_max_rel_diff": result.parity.max_relative_difference,
        "parity_rank_correlation": result.parity.rank_correlation,
        "seconds": time.perf_counter() - started,
    }


def _timed(detector: Detector, samples: Any, batch: Any, timings: Timings) -> float:
    """Inference and whole score of one decoded clip, both timed; returns its CAE score."""
    from training.quantize import cae_score

    wall, cpu = time.perf_counter(), time.process_time()
    detector.reconstruct(batch)
    middle_wall, middle_cpu = time.perf_counter(), time.process_time()
    scored = detector.score(samples)
    end_wall, end_cpu = time.perf_counter(), time.process_time()
    timings.add("inference", middle_wall - wall, middle_cpu - cpu)
    timings.add("score", end_wall - middle_wall, end_cpu - middle_cpu)
    return cae_score(scored)


def compare(fp32: Detector, int8: Detector, clips: Sequence[Clip], *, warmup: int = 3) -> dict[str, Any]:
    """Both detectors on every clip, in alternating order (see module doc); the figures as a dict."""
    pairs = ((fp32, "fp32"), (int8, "int8"))
    timings = {name: Timings(wall=_empty(), cpu=_empty()) for _, name in pairs}
    scores: dict[str, list[float]] = {name: [] for _, name in pairs}
    for i, clip in enumerate([*clips[:warmup], *clips]):
        samples = fp32.read(clip.data).samples  # one decode per clip (both read alike), untimed
        warm = i < warmup
        # Who goes first swaps from clip to clip: the first run may find caches the other left cold.
        for detector, name in pairs if i % 2 == 0 else pairs[::-1]:
            batch, _ = detector.model_inputs(detector.features(samples))
            score = _timed(
                detector, samples, batch, Timings(wall=_empty(), cpu=_empty()) if warm else timings[name]
            )
            if not warm:
                scores[name].append(score)
    seconds = sum(c.seconds for c in clips)
    results = {
        name: PipelineResult(name=name, timings=timings[name], scores=scores[name], clip_seconds=seconds)
        for _, name in pairs
    }
    summary = {name: {stage: result.stage(stage) for stage in STAGES} for name, result in results.items()}
    return {
        "n_clips": len(clips),
        "fp32": summary["fp32"],
        "int8": summary["int8"],
        "speedup": {
            stage: summary["fp32"][stage]["median_ms"] / summary["int8"][stage]["median_ms"]
            for stage in STAGES
        },
        "speedup_cpu": {
            stage: summary["fp32"][stage]["cpu_median_ms"] / summary["int8"][stage]["cpu_median_ms"]
            for stage in STAGES
        },
        "max_rel_score_diff": relative_difference(scores["int8"], scores["fp32"]),
    }


def _empty() -> dict[str, list[float]]:
    return {stage: [] for stage in STAGES}


def measure(
    fp32_dir: Path,
    normal_dir: Path,
    out: Path,
    clips: Sequence[Clip],
    *,
    intra_op_threads: int,
    warmup: int = 3,
    quantized: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Quantize `fp32_dir` into `out` and, when the project's path accepts it, compare the two.

    `quantized`: the row of an earlier `quantize(fp32_dir, normal_dir, out)`, which is then not run again.
    """
    from service.detector import Detector

    row = dict(quantized) if quantized is not None else quantize(fp32_dir, normal_dir, out)
    row["intra_op_threads"] = intra_op_threads
    if row["status"] != "quantized":
        return row
    fp32 = Detector(fp32_dir, intra_op_threads=intra_op_threads)
    int8 = Detector(out, intra_op_threads=intra_op_threads)
    row["onnx_bytes"] = {
        "fp32": (fp32_dir / fp32.bundle.model.file).stat().st_size,
        "int8": (out / int8.bundle.model.file).stat().st_size,
    }
    row.update(compare(fp32, int8, clips, warmup=warmup))
    return row


def summary(row: dict[str, Any]) -> str:
    """One line of what `measure` found, for the run's log."""
    if row.get("status") != "quantized":
        return f"int8 {row.get('status')}: {row.get('reason')}"
    return (
        f"inference median fp32 {row['fp32']['inference']['median_ms']:.2f} ms, int8 "
        f"{row['int8']['inference']['median_ms']:.2f} ms ({row['speedup']['inference']:.2f} x); "
        f"largest relative CAE score difference {row['max_rel_score_diff']:.2e}"
    )

"""int8 detectors: onnxruntime's static quantization of the graph, behind a parity gate.

`quantize_folder` replaces a detector folder's fp32 `model.onnx` by its int8
twin (`onnxruntime.quantization.quantize_static`: QOperator format,
per-channel 7-bit weights, uint8 activations whose ranges come from normal
patches) and records `model.precision: "int8"` in its `threshold.json`.
`check_parity` is the gate: every gate clip's CAE score within `PARITY_RTOL`
of the fp32 graph's and a rank correlation of at least
`MIN_RANK_CORRELATION`, else `QuantizationError`.

`asd-train fit --precision int8` quantizes at export (`training.export`), so
the thresholds and any fusion standardisation are fitted to the int8 graph's
scores. `quantize_detector` (`asd-train quantize MODEL NORMAL_DIR --out NEW`)
does it for an existing fp32 folder:

1. scores the normal clips of NORMAL_DIR with the fp32 folder
   (`training.calibrate.score_normal`, bad files skipped and listed) and
   takes the quantization ranges from the patches of up to
   `MAX_QUANTIZE_CLIPS` of them;
2. quantizes a copy, scores the same clips with it and applies the gate;
3. carries a fused bundle's CAE standardisation over to the int8 scale (the
   ratio of the clips' mean int8 to fp32 CAE score; the statistics keep their
   held-out origin), then refits every threshold on the int8 scores of the
   same clips with `training.calibrate.recalibrate`, as `asd-train
   calibrate` would;
4. renames the result into place, so a refusal at any step leaves `out` as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from service.audio import AudioError, Channel
from service.bundle import Bundle, sha256_of
from service.bundle_scoring import Scoring, ScoringEntry
from service.detector import Detector, Score
from service.features import FeatureError
from training.calibrate import (
    MIN_CLIPS,
    CalibrationResult,
    check_out,
    normal_clips,
    open_detector,
    recalibrate,
    score_normal,
)
from training.calibrate import format_summary as format_calibration
from training.errors import QuantizationError
from training.folders import replace_folder

# The gate: a sound int8 graph keeps every clip's score within about 1 % of fp32's and the clips'
# order; 8-bit weights that saturate put clips 3 % off and their ranks below 0.99.
PARITY_RTOL = 0.02
MIN_RANK_CORRELATION = 0.99
MAX_QUANTIZE_PATCHES = 2048  # activation ranges: the min and max over this many patches
MAX_QUANTIZE_CLIPS = 64  # clips of NORMAL_DIR the patches are cut from (10-s clips: 39 patches each)
_BATCH = 64


def sample_patches(patches: np.ndarray, limit: int = MAX_QUANTIZE_PATCHES) -> np.ndarray:
    """At most `limit` patches taken evenly from `patches` (clips in order: every ID, every part of a clip)."""
    if len(patches) <= limit:
        return patches
    return patches[np.linspace(0, len(patches) - 1, limit).round().astype(np.int64)]


def quantize_graph(fp32: Path, out: Path, patches: np.ndarray, *, input_name: str) -> None:
    """Write the static int8 quantization of graph `fp32` to `out`, activation ranges from `patches`.

    QOperator format (QLinearConv, QLinearMatMul); uint8 activations with int8 weights per output
    channel, the pair onnxruntime's x86 kernels are built for. Inputs and outputs stay float32. The weights use 7
    bits (`reduce_range`): x86 without VNNI sums uint8 x int8 pairs in saturating 16-bit lanes,
    which with 8-bit weights moves scores by percents and reorders clips; 7 bits cannot saturate,
    so the graph scores alike on every x86 CPU.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if len(patches) == 0:
        raise QuantizationError("no patches to calibrate the int8 graph's activation ranges on")
    batch = np.ascontiguousarray(patches, dtype=np.float32)

    class Patches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (
                batch[i : i + _BATCH] for i in range(0, len(batch), _BATCH)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            chunk = next(self._batches, None)
            return None if chunk is None else {input_name: chunk}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice (pre-processing) goes to the root logger as warnings
    try:
        quantize_static(
            str(fp32),
            str(out),
            Patches(),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        root.setLevel(level)


def quantize_folder(folder: Path, patches: np.ndarray) -> Bundle:
    """Replace `folder`'s fp32 graph by its int8 twin (ranges from `patches`); returns the rewritten bundle."""
    bundle = Bundle.read(folder)
    if bundle.model.precision != "fp32":
        raise QuantizationError(
            f"{folder} holds an {bundle.model.precision} graph; quantize its fp32 original"
        )
    model_path = folder / bundle.model.file
    partial = folder / f".{model_path.name}.int8"
    try:
        quantize_graph(model_path, partial, patches, input_name=bundle.model.input_name)
        os.replace(partial, model_path)
    finally:
        partial.unlink(missing_ok=True)
    model = bundle.model.model_copy(update={"precision": "int8", "sha256": sha256_of(model_path)})
    updated = bundle.model_copy(update={"model": model})
    updated.write(folder)
    return updated


def cae_score(score: Score) -> float:
    """The clip's CAE score (its pooled patch error) before any fusion: what quantization changes."""
    return score.components["cae"] if score.components else score.score


@dataclass(frozen=True)
class Parity:
    """How the int8 graph's CAE scores of the gate clips compare with the fp32 graph's."""

    n_clips: int
    max_relative_difference: float  # the largest |int8 - fp32| / fp32 over the clips
    mean_relative_difference: float  # mean of (int8 - fp32) / fp32: a systematic shift
    rank_correlation: float  # Spearman
    rtol: float
    min_rank_correlation: float

    def describe(self) -> str:
        return (
            f"int8 graph: {self.n_clips} clips' scores within {100 * self.max_relative_difference:.2f} % "
            f"of fp32 (mean shift {100 * self.mean_relative_difference:+.2f} %, gate "
            f"{100 * self.rtol:g} %), rank correlation {self.rank_correlation:.4f} "
            f"(gate >= {self.min_rank_correlation:g})"
        )


def check_parity(
    fp32: Sequence[float] | np.ndarray,
    int8: Sequence[float] | np.ndarray,
    *,
    names: Sequence[str],
    rtol: float | None = None,
    min_rank_correlation: float | None = None,
) -> Parity:
    """The gate: `Parity` of the same clips' CAE scores (one per name), else `QuantizationError`.

    `rtol` and `min_rank_correlation` default to `PARITY_RTOL` and `MIN_RANK_CORRELATION`.
    """
    from scipy.stats import spearmanr

    rtol = PARITY_RTOL if rtol is None else rtol
    min_rank_correlation = MIN_RANK_CORRELATION if min_rank_correlation is None else min_rank_correlation

    x = np.asarray(fp32, dtype=np.float64)
    y = np.asarray(int8, dtype=np.float64)
    if x.shape != y.shape or x.shape != (len(names),):
        raise ValueError(f"{x.shape} fp32 and {y.shape} int8 scores for {len(names)} clips")
    if x.size < 3:
        raise QuantizationError(
            f"{x.size} clip(s) to compare the int8 graph with fp32 on; at least 3 are needed"
        )
    relative = (y - x) / np.maximum(np.abs(x), np.finfo(np.float64).tiny)
    # Constant scores have no ranks: NaN, which fails the gate below.
    rho = float(spearmanr(x, y).statistic) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
    worst = int(np.argmax(np.abs(relative)))
    parity = Parity(
        n_clips=int(x.size),
        max_relative_difference=float(np.abs(relative[worst])),
        mean_relative_difference=float(np.mean(relative)),
        rank_correlation=rho,
        rtol=rtol,
        min_rank_correlation=min_rank_correlation,
    )
    problems = []
    if not parity.max_relative_difference <= rtol:  # also catches NaN
        problems.append(
            f"{names[worst]} scores {y[worst]:.6g} with int8 and {x[worst]:.6g} with fp32, "
            f"{100 * parity.max_relative_difference:.2f} % apart (tolerance {100 * rtol:g} %)"
        )
    if not rho >= min_rank_correlation:
        problems.append(f"the clips' rank correlation is {rho:.4f} (needs >= {min_rank_correlation:g})")
    if problems:
        raise QuantizationError(
            f"the int8 graph does not score as the fp32 one on {x.size} calibration clips: "
            f"{'; '.join(problems)}; nothing was written (keep the fp32 model)"
        )
    return parity


@dataclass(frozen=True)
class QuantizeResult:
    folder: Path
    parity: Parity
    calibration: CalibrationResult  # the thresholds refitted on the int8 scores


def quantize_detector(
    model_dir: Path,
    normal_dir: Path,
    out: Path,
    *,
    channel: Channel = 0,
    command: str | None = None,
    rtol: float | None = None,
    min_rank_correlation: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> QuantizeResult:
    """The int8 twin of fp32 folder `model_dir`, calibrated on the normal clips of `normal_dir`, in `out`.

    See the module doc for the steps; every refusal raises before `out` is touched. `rtol` and
    `min_rank_correlation` are the gate's (`check_parity`).
    """
    model_dir, normal_dir, out = Path(model_dir), Path(normal_dir), Path(out)
    fp32 = open_detector(model_dir, QuantizationError)
    bundle = fp32.bundle
    if bundle.model.precision != "fp32":
        raise QuantizationError(f"{model_dir} holds an {bundle.model.precision} graph already")
    check_out(model_dir, out)
    folder, normal, _ = normal_clips(normal_dir, bundle)
    _check_own_thresholds(bundle, normal, folder)
    before = score_normal(fp32, normal, channel=channel, progress=progress)
    if len(before.scores) < MIN_CLIPS:
        raise QuantizationError(
            f"{len(before.scores)} usable normal clip(s) in {folder}; the int8 graph's thresholds "
            f"are refitted on them, which takes at least {MIN_CLIPS}"
        )
    patches = _patches(fp32, before.paths, channel=channel)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.quantize-", dir=out.parent))
    try:
        int8_dir = stage / "int8"
        shutil.copytree(model_dir, int8_dir)
        quantized = quantize_folder(int8_dir, patches)
        same = list(zip(before.paths, before.machine_ids, strict=True))
        after = score_normal(Detector(int8_dir), same, channel=channel, progress=progress)
        if after.paths != before.paths:
            raise QuantizationError("the int8 graph could not score every clip the fp32 graph scored")
        x = np.asarray([cae_score(s) for s in before.scores])
        y = np.asarray([cae_score(s) for s in after.scores])
        parity = check_parity(
            x, y, names=[p.name for p in before.paths], rtol=rtol, min_rank_correlation=min_rank_correlation
        )
        if quantized.scoring is not None and quantized.scoring.fused:
            scoring = carry_standardisation(quantized.scoring, ratio=float(np.mean(y) / np.mean(x)))
            quantized.model_copy(update={"scoring": scoring}).write(int8_dir)
        done = stage / out.name  # recalibrate names the bundle after its folder
        calibration = recalibrate(
            int8_dir, normal_dir, done, channel=channel, command=command, progress=progress
        )
        replace_folder(done, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return QuantizeResult(folder=out, parity=parity, calibration=replace(calibration, folder=out))


def _check_own_thresholds(bundle: Bundle, normal: Sequence[tuple[Path, str]], folder: Path) -> None:
    """Refuse when an ID's own threshold could not be refitted: it would judge int8 scores by fp32 ones."""
    counts = Counter(machine_id for _, machine_id in normal)
    short = {mid: counts[mid] for mid in sorted(bundle.threshold.per_id or {}) if counts[mid] < MIN_CLIPS}
    if short:
        listed = ", ".join(f"{mid}: {n}" for mid, n in short.items())
        raise QuantizationError(
            f"machine ID(s) with their own threshold have too few normal clips in {folder} ({listed}); "
            f"each needs at least {MIN_CLIPS} to refit its threshold on the int8 scores"
        )


def _patches(detector: Detector, paths: Sequence[Path], *, channel: Channel) -> np.ndarray:
    """Graph inputs of up to `MAX_QUANTIZE_CLIPS` clips spread over `paths`, at most `MAX_QUANTIZE_PATCHES`."""
    chosen = [
        paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, MAX_QUANTIZE_CLIPS).round().astype(int))
    ]
    found = []
    for path in chosen:
        try:
            samples = detector.read(path, channel=channel).samples
        except (AudioError, FeatureError, OSError):  # scored a moment ago; a file that vanished since
            continue
        found.append(detector.model_inputs(detector.features(samples))[0])
    if not found:
        raise QuantizationError(
            "none of the clips could be read again for the int8 graph's activation ranges"
        )
    return sample_patches(np.concatenate(found))


def carry_standardisation(scoring: Scoring, *, ratio: float) -> Scoring:
    """`scoring` with every entry's CAE mean and std scaled by `ratio` (int8 / fp32 mean CAE score)."""

    def scaled(entry: ScoringEntry) -> ScoringEntry:
        cae = entry.standardisation["cae"]
        moved = cae.model_copy(update={"mean": cae.mean * ratio, "std": cae.std * ratio})
        return entry.model_copy(update={"standardisation": {**entry.standardisation, "cae": moved}})

    return scoring.model_copy(
        update={
            "model_wide": None if scoring.model_wide is None else scaled(scoring.model_wide),
            "per_id": None if scoring.per_id is None else {k: scaled(v) for k, v in scoring.per_id.items()},
        }
    )


def format_summary(result: QuantizeResult) -> str:
    """What `asd-train quantize` prints: the parity figures, then the recalibration's summary."""
    return f"{result.parity.describe()}\n{format_calibration(result.calibration)}"

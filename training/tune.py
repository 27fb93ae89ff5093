"""`asd-train tune`: a hyperparameter search scored on pseudo-anomalies of the user's own normal clips.

A site's recordings hold no faults, so a candidate cannot be judged on real
ones. `run_tune`:

1. decodes every normal training clip once; unreadable or too-short ones are
   named, counted and left out;
2. holds out, per machine ID, `holdout_fraction` of the clips (at least
   `MIN_HELD_OUT`, drawn with the seed); they are never trained on;
3. runs Optuna trials (TPE, seeded; the first trial is `fit`'s defaults so
   the table shows what tuning gained): each is one `training.fit.run_fit` of
   the other clips with `--calibration holdout`, exported as `fit` exports;
4. scores the held-out clips and one pseudo-anomalous version per kind of
   each (`training.pseudo`, the same for every trial) through the exported
   `Detector` with the clip's machine ID. The objective is the mean over IDs
   of the AUC of pseudo-anomalies against held-out normals; pAUC
   (`max_fpr=0.1`) and the AUC per kind are reported beside it.

The search space (`SearchSpace`) is small on purpose; patches never overlap
(hop = frames, as `fit`'s default). The best trial's parameters come back as
the `asd-train fit` command that fits them on all clips (with `fit`'s own
calibration). A trial that fails is recorded with its reason and the search
goes on.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from io import StringIO
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from service.audio import AudioError, Channel, read_audio
from service.detector import Detector, check_finite
from service.features import FeatureParams
from service.patches import PatchLayout
from training.dataset import ClipFile, Skipped, list_clips
from training.errors import CliError, DatasetError
from training.fit import run_fit
from training.fit_options import ARCH_DEFAULTS, ARCH_SCORERS, DEFAULT_FUSION, MIN_FIT_CLIPS, FitOptions
from training.metrics import MAX_FPR
from training.model import CaeConfig
from training.pseudo import KINDS, MIN_LENGTH_FACTOR, Kind, pseudo_anomalies
from training.threshold import MIN_CALIBRATION_CLIPS
from training.tune_report import TABLE_HEAD, summary_lines, trial_row, write_json

# Fewer held-out normals than this per ID make an AUC of steps of 1/(5 * 5 * n).
MIN_HELD_OUT = 5
# What `fit` does without options (training.fit_options, training.model), the search's first trial.
DEFAULT_PARAMS: dict[str, Any] = {
    "frames": ARCH_DEFAULTS["cae"]["frames"],
    "epochs": ARCH_DEFAULTS["cae"]["epochs"],
    "learning_rate": FitOptions().learning_rate,
    "filters": ",".join(map(str, CaeConfig().filters)),
    "bottleneck": CaeConfig().bottleneck,
    "pooling": FitOptions().pooling,
    "scorer": ARCH_SCORERS["cae"],
    "fusion": DEFAULT_FUSION,  # used only by a fused scorer
}


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may choose. Defaults: around `fit`'s own (frames 8, 8 epochs, 1e-3, 16,32,64, 16)."""

    frames: tuple[int, ...] = (4, 8, 16)
    epochs: tuple[int, int] = (4, 12)
    learning_rate: tuple[float, float] = (3e-4, 3e-3)  # log-uniform
    filters: tuple[str, ...] = ("8,16,32", "16,32,64")  # wider costs 4x the time per epoch
    bottleneck: tuple[int, ...] = (8, 16, 32)
    pooling: tuple[str, ...] = ("mean", "topk", "gwrp")  # each with its default parameter
    scorer: tuple[str, ...] = ("cae", "cae+envelope", "cae+envelope+spectrum")
    fusion: tuple[str, ...] = ("mean", "max")

    def check(self, features: FeatureParams) -> None:
        """Raise `ModelConfigError` (or `CliError`) unless every combination builds a CAE."""
        low, high = self.epochs
        if not 1 <= low <= high:
            raise CliError(f"--epochs needs 1 <= LOW <= HIGH, got {low}:{high}")
        for filters in self.filters:
            for frames in self.frames:
                _cae(filters, self.bottleneck[0]).check(n_mels=features.n_mels, frames=frames)

    def suggest(self, trial: Any) -> dict[str, Any]:
        """One trial's parameters from an Optuna trial; the learning rate kept to 3 digits, as printed."""
        rate = trial.suggest_float("learning_rate", *self.learning_rate, log=True)
        return {
            "frames": trial.suggest_categorical("frames", list(self.frames)),
            "epochs": trial.suggest_int("epochs", *self.epochs),
            "learning_rate": float(f"{rate:.3g}"),
            "filters": trial.suggest_categorical("filters", list(self.filters)),
            "bottleneck": trial.suggest_categorical("bottleneck", list(self.bottleneck)),
            "pooling": trial.suggest_categorical("pooling", list(self.pooling)),
            "scorer": trial.suggest_categorical("scorer", list(self.scorer)),
            "fusion": trial.suggest_categorical("fusion", list(self.fusion)),
        }

    def defaults(self) -> dict[str, Any]:
        """`fit`'s defaults (`DEFAULT_PARAMS`), each moved into the space if it lies outside."""
        out = dict(DEFAULT_PARAMS)
        for name in ("frames", "filters", "bottleneck", "pooling", "scorer", "fusion"):
            choices = getattr(self, name)
            out[name] = out[name] if out[name] in choices else choices[0]
        for name in ("epochs", "learning_rate"):
            low, high = getattr(self, name)
            out[name] = min(max(out[name], low), high)
        return out


@dataclass(frozen=True)
class TuneOptions:
    """Everything `tune` can be told beyond the data root (the CLI's flags)."""

    machine_type: str = "slider"
    ids: tuple[str, ...] | None = None
    trials: int = 20
    timeout: float | None = None  # seconds from the start; no trial starts after it (the first always)
    seed: int = 0
    holdout_fraction: float = 0.2
    val_fraction: float = 0.1  # each trial's own holdout, for early stopping and calibration
    channel: Channel = 0
    kinds: tuple[Kind, ...] = KINDS
    space: SearchSpace = field(default_factory=SearchSpace)
    workers: int = 2


@dataclass
class TrialRecord:
    number: int
    params: dict[str, Any]
    state: str  # "complete" or "failed"
    seconds: float
    auc: float | None = None
    pauc: float | None = None
    per_id: dict[str, dict[str, float]] = field(default_factory=dict)
    per_kind: dict[str, float] = field(default_factory=dict)  # mean over IDs of each kind's AUC
    error: str | None = None


@dataclass
class TuneResult:
    trials: list[TrialRecord]
    best: TrialRecord | None  # None until a trial completes
    fit_command: list[str]  # `asd-train fit ...` of the best parameters on all clips
    train: list[ClipFile]
    held_out: list[ClipFile]
    skipped: list[Skipped]
    seconds: float = 0.0


def trial_options(params: dict[str, Any], options: TuneOptions) -> FitOptions:
    """A trial's `FitOptions`: the parameters, one training with a holdout, quiet."""
    return FitOptions(
        machine_type=options.machine_type,
        frames=params["frames"],
        patch_hop=params["frames"],
        epochs=params["epochs"],
        learning_rate=params["learning_rate"],
        cae=_cae(params["filters"], params["bottleneck"]),
        pooling=params["pooling"],
        scorer=params["scorer"],
        fusion=params["fusion"] if params["scorer"] != "cae" else None,
        seed=options.seed,
        channel=options.channel,
        calibration="holdout",
        val_fraction=options.val_fraction,
        workers=options.workers,
        progress=False,
    )


def fit_command(params: dict[str, Any], options: TuneOptions, *, data_root: Path, out: Path) -> list[str]:
    """`asd-train fit` of `params` on all clips of `data_root` (`fit`'s own calibration), as arguments."""
    argv = ["asd-train", "fit", str(data_root), "--out", str(out), "--machine-type", options.machine_type]
    if options.ids:
        argv += ["--ids", ",".join(options.ids)]
    frames = str(params["frames"])
    argv += ["--frames", frames, "--patch-hop", frames, "--epochs", str(params["epochs"])]
    argv += ["--learning-rate", f"{params['learning_rate']:g}", "--filters", params["filters"]]
    argv += ["--bottleneck", str(params["bottleneck"]), "--pooling", params["pooling"]]
    argv += ["--scorer", params["scorer"], "--seed", str(options.seed)]
    if params["scorer"] != "cae":
        argv += ["--fusion", params["fusion"]]
    if options.channel != 0:
        argv += ["--channel", str(options.channel)]
    return argv


def run_tune(
    data_root: Path,
    options: TuneOptions,
    *,
    out_json: Path,
    best_out: Path,
    command: str | None = None,
    stream: TextIO | None = None,
) -> TuneResult:
    """Search; print the table a row per trial as each ends, then the best; write `out_json` after each.

    `best_out` is the model folder named in the best parameters' `fit` command.
    """
    stream = sys.stdout if stream is None else stream
    if options.trials < 1:
        raise CliError(f"--trials must be at least 1, got {options.trials}")
    if not (0.0 < options.holdout_fraction < 1.0 and 0.0 < options.val_fraction < 1.0):
        raise CliError("--holdout-fraction and --val-fraction must be between 0 and 1 (exclusive)")
    features = FeatureParams()
    options.space.check(features)
    started = time.perf_counter()
    files, skipped = _readable_clips(Path(data_root), options, features)
    train, held = split_held_out(files, options)
    pseudo = f"{len(held) * len(options.kinds)} pseudo-anomalies: {', '.join(options.kinds)}"
    _say(stream, f"{len(train)} clips to train on, {len(held)} held out to score ({pseudo})")
    if skipped:
        names = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5])
        _say(stream, f"skipped {len(skipped)} unreadable or too short clip(s): {names}")

    _say(stream, TABLE_HEAD)
    import optuna  # here, not at import: `asd-train --help` stays fast

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=options.seed))
    study.enqueue_trial(options.space.defaults())
    result = TuneResult([], None, [], train, held, skipped)
    with tempfile.TemporaryDirectory(prefix="asd-tune-") as work:
        train_root = _link_clips(train, Path(work) / "train")
        for number in range(options.trials):
            # As Optuna's own `timeout`: checked between trials, so at least one runs.
            if number and options.timeout is not None and time.perf_counter() - started > options.timeout:
                _say(stream, f"--timeout {options.timeout:g} s reached after {number} trial(s)")
                break
            trial = study.ask()
            params = options.space.suggest(trial)
            record = _run_trial(number, params, train_root, Path(work) / f"trial-{number}", held, options)
            if record.auc is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, record.auc)
            _say(stream, trial_row(record))
            result.trials.append(record)
            done = [r for r in result.trials if r.auc is not None]
            if done:
                result.best = max(done, key=lambda r: r.auc or 0.0)
                result.fit_command = fit_command(
                    result.best.params, options, data_root=Path(data_root), out=best_out
                )
            result.seconds = time.perf_counter() - started
            write_json(out_json, result, options, command)
    if result.best is None:
        first = result.trials[0].error
        raise CliError(f"all {len(result.trials)} trial(s) failed (see {out_json}); the first: {first}")
    for line in summary_lines(result):
        _say(stream, line)
    return result


def held_out_count(n: int, fraction: float) -> int:
    return max(MIN_HELD_OUT, round(fraction * n))


def _enough(counts: dict[str, int], options: TuneOptions) -> bool:
    """Whether these clips per ID leave a held-out part and a trial's fit `fit` accepts."""
    train = [n - held_out_count(n, options.holdout_fraction) for n in counts.values()]
    # `training.dataset.split_validation`'s count per ID, and fit's minimums over all IDs.
    val = sum(min(max(1, round(options.val_fraction * t)), t - 1) for t in train)
    return min(train) >= 2 and val >= MIN_CALIBRATION_CLIPS and sum(train) >= MIN_FIT_CLIPS


def needed_per_id(n_ids: int, options: TuneOptions) -> int:
    """The fewest clips each of `n_ids` IDs needs for a split and a trial's fit."""
    n = MIN_HELD_OUT + 2
    while not _enough(dict.fromkeys(map(str, range(n_ids)), n), options):
        n += 1
    return n


def split_held_out(files: Sequence[ClipFile], options: TuneOptions) -> tuple[list[ClipFile], list[ClipFile]]:
    """Whole clips per ID: (train, held out), each in input order; `DatasetError` when too few."""
    by_id: dict[str, list[int]] = {}
    for index, file in enumerate(files):
        by_id.setdefault(file.machine_id, []).append(index)
    counts = {mid: len(rows) for mid, rows in sorted(by_id.items())}
    if not _enough(counts, options):
        found = ", ".join(f"{mid}: {n}" for mid, n in counts.items())
        raise DatasetError(
            f"too few readable clips per machine ID to tune (found {found}): it needs at least "
            f"{needed_per_id(len(counts), options)} per ID (the larger of {MIN_HELD_OUT} and "
            f"{options.holdout_fraction:.0%} held out to score, the rest to fit with a "
            f"{options.val_fraction:.0%} holdout; a larger --val-fraction needs fewer)"
        )
    rng = np.random.default_rng(options.seed)
    held: set[int] = set()
    for _, rows in sorted(by_id.items()):
        size = held_out_count(len(rows), options.holdout_fraction)
        held.update(int(i) for i in rng.choice(rows, size=size, replace=False))
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def _readable_clips(
    data_root: Path, options: TuneOptions, features: FeatureParams
) -> tuple[list[ClipFile], list[Skipped]]:
    files = list_clips(data_root, machine_type=options.machine_type, split="train", ids=options.ids)
    normal = [f for f in files if f.label != "anomaly"]  # as `fit`: never learn a labelled fault
    if not normal:
        raise DatasetError(f"all {len(files)} WAV files under {data_root} are named anomaly_*")
    frames = max(options.space.frames)
    layout = PatchLayout(frames=frames, hop=frames, arch="cae", params=features)
    # Long enough for the widest patch even after the largest speed-up.
    rate = features.sample_rate
    min_seconds = layout.min_samples / rate / MIN_LENGTH_FACTOR

    def problem(file: ClipFile) -> Skipped | None:
        try:
            read_audio(file.path, sample_rate=rate, channel=options.channel, min_seconds=min_seconds)
        except (AudioError, OSError) as error:
            return Skipped(path=file.path, reason=str(error))
        return None

    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        problems = list(pool.map(problem, normal))
    skipped = [p for p in problems if p is not None]
    readable = [f for f, p in zip(normal, problems, strict=True) if p is None]
    if not readable:
        first = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:3])
        raise DatasetError(f"none of the {len(normal)} WAV files could be used ({first})")
    return readable, skipped


def _link_clips(files: Sequence[ClipFile], folder: Path) -> Path:
    """A plain folder of the training part for `run_fit`: symlinks, or copies where links are refused."""
    folder.mkdir(parents=True)
    for file in files:
        target = folder / file.path.name
        try:
            os.symlink(file.path.resolve(), target)
        except OSError:
            shutil.copy2(file.path, target)
    return folder


def _run_trial(
    number: int,
    params: dict[str, Any],
    train_root: Path,
    model_dir: Path,
    held: Sequence[ClipFile],
    options: TuneOptions,
) -> TrialRecord:
    began = time.perf_counter()
    try:
        run_fit(train_root, model_dir, trial_options(params, options), stream=StringIO())
        per_id, per_kind = _score_held_out(Detector(model_dir, intra_op_threads=1), held, options)
    # A candidate that cannot be fitted, exported or scored fails alone, whatever the cause; the
    # search goes on and the reason is recorded.
    except Exception as error:
        reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        return TrialRecord(number, params, "failed", time.perf_counter() - began, error=reason)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
        _release_keras()
    auc, pauc = (float(np.mean([m[key] for m in per_id.values()])) for key in ("auc", "pauc"))
    return TrialRecord(number, params, "complete", time.perf_counter() - began, auc, pauc, per_id, per_kind)


def _score_held_out(
    detector: Detector, held: Sequence[ClipFile], options: TuneOptions
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """AUC and pAUC per ID of pseudo-anomalies against held-out normals; AUC per kind, mean over IDs."""
    from sklearn.metrics import roc_auc_score

    rate = detector.params.sample_rate

    def scores(file: ClipFile) -> tuple[float, list[float]]:
        samples = detector.read(file.path, channel=options.channel).samples
        # Seeded by the file name, so a clip's pseudo-anomalies are the same in every trial and split.
        seed = [options.seed, zlib.crc32(file.path.name.encode())]
        pseudo = pseudo_anomalies(samples, sample_rate=rate, seed=seed, kinds=options.kinds)
        one = [check_finite(detector.score(p.samples, machine_id=file.machine_id)).score for p in pseudo]
        return check_finite(detector.score(samples, machine_id=file.machine_id)).score, one

    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        scored = list(pool.map(scores, held))
    per_id: dict[str, dict[str, float]] = {}
    kind_aucs: dict[str, list[float]] = {kind: [] for kind in options.kinds}
    for mid in sorted({f.machine_id for f in held}):
        rows = [s for f, s in zip(held, scored, strict=True) if f.machine_id == mid]
        normal = np.array([r[0] for r in rows])
        pseudo = np.array([r[1] for r in rows])  # (n_clips, n_kinds)
        y = np.r_[np.zeros(normal.size), np.ones(pseudo.size)]
        s = np.r_[normal, pseudo.ravel()]
        per_id[mid] = {"auc": float(roc_auc_score(y, s)), "pauc": float(roc_auc_score(y, s, max_fpr=MAX_FPR))}
        for k, kind in enumerate(options.kinds):
            y_k = np.r_[np.zeros(normal.size), np.ones(len(rows))]
            auc = float(roc_auc_score(y_k, np.r_[normal, pseudo[:, k]]))
            per_id[mid][kind] = auc
            kind_aucs[kind].append(auc)
    return per_id, {kind: float(np.mean(v)) for kind, v in kind_aucs.items()}


def _release_keras() -> None:
    """Free the finished trial's graphs; without it every trial's model stays in TensorFlow's memory."""
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()
    gc.collect()


def _cae(filters: str, bottleneck: int) -> CaeConfig:
    return replace(CaeConfig(), filters=tuple(int(f) for f in filters.split(",")), bottleneck=bottleneck)


def _say(stream: TextIO, text: str) -> None:
    print(text, file=stream, flush=True)

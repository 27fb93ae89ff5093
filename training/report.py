"""Evaluation of exported detectors on DCASE-layout test clips, and its report.

`evaluate_model` scores every labelled test clip of a model's machine type
through `service.detector.Detector` (the code the service runs, on the
exported ONNX graph), then:

* `build_report` computes per machine ID and on average: ROC AUC, pAUC
  (`roc_auc_score(y, s, max_fpr=0.1)`, as the DCASE evaluator), and the
  precision, recall, F1 and confusion matrix of the decisions at the
  model's threshold (see `training.metrics` for the conventions);
* `print_table` prints it; `write_report` writes ``report.json``, the DCASE
  baseline's CSVs and PNG figures.

With a second model (``compare``) both detectors score the same clips; the
report keeps the single-model shape at its top level and nests the other
model, in the same shape, under ``"compare"``::

    {"model": "slider", "machine_type": "slider", "threshold": 1.23,
     "ids": {"00": {"auc": .., "pauc": .., "precision": .., "recall": .., "f1": ..,
                    "tp": .., "fp": .., "tn": .., "fn": .., "n_normal": .., "n_anomaly": ..}, ...},
     "mean": {"auc": .., "pauc": .., "precision": .., "recall": .., "f1": ..},
     "compare": {"model": "slider-dense", "machine_type": "slider", "threshold": ..,
                 "ids": {..}, "mean": {..}}}

Files written to the output folder::

    report.json
    anomaly_score_<type>_id_XX.csv      filename,score   (no header, as the DCASE 2020 baseline)
    decision_result_<type>_id_XX.csv    filename,0|1     (1 = anomalous)
    compare/anomaly_score_... , compare/decision_result_...   the second model's CSVs
    bins.csv, bin_errors.npz            the error per mel bin (see `write_bin_errors`)
    compare/bins.csv, compare/bin_errors.npz                the second model's
    roc.png, score_histograms.png, confusion_matrices.png, bin_errors.png   both models in each figure
    kinds.csv, compare/kinds.csv        AUC per fault kind, when the test folder has anomaly_kinds.csv

A test folder written by `training.synth` names each anomalous clip's fault
in ``anomaly_kinds.csv`` (``file,machine_id,kind,severity``). Then every
section of the report also has ``"kinds"``: per ID and fault kind, the AUC
of that kind's clips against all normal clips of the ID, and the mean over
IDs (`kind_aucs`); the table gets a second part with them.

Errors a user can cause derive from `EvaluationError`; `run_evaluate` turns
them into a message on stderr and exit status 2 (as every `asd-train` usage error).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from service.audio import AudioError, Channel, read_audio
from service.detector import ClipTooShortError, Detector, DetectorError, Score
from training import dataset, plots
from training.cli import parse_channel
from training.metrics import (
    MAX_FPR,
    MEAN_KEYS,
    UndefinedMetricError,
    detection_metrics,
    mean_metrics,
    total_counts,
)
from training.synth import ANOMALY_KINDS_FILE

REPORT_FILE = "report.json"
COMPARE_DIR = "compare"
ROC_FIGURE = "roc.png"
HISTOGRAM_FIGURE = "score_histograms.png"
BINS_FILE = "bins.csv"
BIN_ERRORS_FILE = "bin_errors.npz"
BINS_FIGURE = "bin_errors.png"
KINDS_FILE = "kinds.csv"
CONFUSION_FIGURE = "confusion_matrices.png"


class EvaluationError(Exception):
    """An evaluation that cannot run; the message says why, for the user."""


class MissingFolderError(EvaluationError):
    """The model folder or the data root does not exist."""


class NoTestDataError(EvaluationError):
    """The data root holds no usable labelled test clips for the model's machine type and IDs."""


class ModelLoadError(EvaluationError):
    """The model folder exists but is not a loadable detector (see `service.detector.DetectorError`)."""


class ClipError(EvaluationError):
    """A test clip that cannot be decoded or is too short for the model."""


@dataclass(frozen=True)
class IdScores:
    """Scores of one machine ID's test clips; all three lists have length n_clips.

    `files` are the clip paths, `labels` 0 normal / 1 anomalous;
    `bin_errors`, when present, one array of per-mel-bin errors per clip
    (`service.detector.Score.bin_errors`).
    """

    files: list[str]
    labels: list[int]
    scores: list[float]
    bin_errors: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not len(self.files) == len(self.labels) == len(self.scores):
            raise ValueError(
                f"{len(self.files)} files, {len(self.labels)} labels and {len(self.scores)} scores "
                "differ in length"
            )
        if self.bin_errors is not None and len(self.bin_errors) != len(self.files):
            raise ValueError(f"{len(self.bin_errors)} bin error rows for {len(self.files)} files")


@dataclass(frozen=True)
class ModelScores:
    """What one detector said about the test clips, per machine ID.

    `ids` maps a machine ID ("00") to its clips' scores, either as `IdScores`
    or as a plain ``{"files": [...], "labels": [...], "scores": [...]}``.
    """

    model: str
    machine_type: str
    threshold: float
    ids: Mapping[str, IdScores] = field(default_factory=dict)
    # Centre frequency (Hz) of each mel bin, for the per-bin files; None when unknown.
    bin_centres_hz: Sequence[float] | None = None

    def __post_init__(self) -> None:
        converted = {mid: v if isinstance(v, IdScores) else IdScores(**v) for mid, v in self.ids.items()}
        object.__setattr__(self, "ids", dict(sorted(converted.items())))


def _model_section(scores: ModelScores, *, max_fpr: float) -> dict:
    if not scores.ids:
        raise NoTestDataError(f"{scores.model}: no machine IDs with test clips")
    per_id = {}
    for machine_id, clips in scores.ids.items():
        try:
            per_id[machine_id] = detection_metrics(
                clips.labels, clips.scores, scores.threshold, max_fpr=max_fpr
            )
        except UndefinedMetricError as error:
            raise NoTestDataError(f"{scores.model}, ID {machine_id}: {error}") from None
    return {
        "model": scores.model,
        "machine_type": scores.machine_type,
        "threshold": float(scores.threshold),
        "ids": per_id,
        "mean": mean_metrics(per_id),
    }


def read_anomaly_kinds(test_dir: Path) -> dict[str, str]:
    """File name -> fault kind from the folder's ``anomaly_kinds.csv``; {} when there is none.

    Raises EvaluationError for a file without the ``file`` and ``kind`` columns.
    """
    path = Path(test_dir) / ANOMALY_KINDS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"file", "kind"} <= set(reader.fieldnames or ()):
            raise EvaluationError(
                f"{path}: needs a header with the columns file and kind, got {reader.fieldnames}; "
                f"fix or remove it (it only adds the AUC per fault kind)"
            )
        return {row["file"]: row["kind"] for row in reader if row["file"] and row["kind"]}


def kind_aucs(scores: ModelScores, kinds: Mapping[str, str]) -> dict:
    """AUC of each fault kind's clips against all normal clips of their ID.

    `kinds` maps a clip's file name to its kind (`read_anomaly_kinds`);
    anomalous clips it does not list count as ``"unlisted"``. Returns
    ``{"ids": {id: {kind: {"auc": .., "n_anomaly": ..}}}, "mean": {kind: auc}}``,
    the mean over the IDs that have clips of the kind.
    """
    per_id: dict[str, dict[str, dict]] = {}
    for machine_id, clips in scores.ids.items():
        normal = [s for s, label in zip(clips.scores, clips.labels, strict=True) if label == 0]
        by_kind: dict[str, list[float]] = {}
        for name, score, label in zip(clips.files, clips.scores, clips.labels, strict=True):
            if label == 1:
                by_kind.setdefault(kinds.get(Path(name).name, "unlisted"), []).append(score)
        per_id[machine_id] = {
            kind: {
                "auc": float(roc_auc_score([0] * len(normal) + [1] * len(values), normal + values)),
                "n_anomaly": len(values),
            }
            for kind, values in sorted(by_kind.items())
        }
    names = sorted({kind for row in per_id.values() for kind in row})
    mean = {k: float(np.mean([row[k]["auc"] for row in per_id.values() if k in row])) for k in names}
    return {"ids": per_id, "mean": mean}


def build_report(
    primary: ModelScores, compare: ModelScores | None = None, *, max_fpr: float = MAX_FPR
) -> dict:
    """The report dict of one model, with a second one under ``"compare"`` when given.

    Raises NoTestDataError when an ID lacks normal or anomalous clips (AUC
    would be undefined).
    """
    report = _model_section(primary, max_fpr=max_fpr)
    if compare is not None:
        if compare.model == primary.model:
            raise ValueError(f"both models are named {primary.model!r}; give them distinct names")
        report["compare"] = _model_section(compare, max_fpr=max_fpr)
    return report


def _sections(report: Mapping) -> list[Mapping]:
    return [report] + ([report["compare"]] if "compare" in report else [])


def format_table(report: Mapping) -> str:
    """The report as an aligned text table: one row per (ID, model), then the mean rows.

    Metrics in the mean rows are averaged over IDs (as DCASE does); their
    confusion counts are summed over IDs.
    """
    sections = _sections(report)
    header = ["ID", "model", "AUC", "pAUC", "precision", "recall", "F1", "TP", "FP", "TN", "FN"]
    rows: list[list[str]] = []

    def metric_cells(values: Mapping) -> list[str]:
        return [f"{values[key]:.4f}" for key in MEAN_KEYS]

    ids = sorted({mid for section in sections for mid in section["ids"]})
    for machine_id in ids:
        for section in sections:
            if machine_id in section["ids"]:
                m = section["ids"][machine_id]
                rows.append(
                    [
                        machine_id,
                        section["model"],
                        *metric_cells(m),
                        *(str(m[k]) for k in ("tp", "fp", "tn", "fn")),
                    ]
                )
    for section in sections:
        total = total_counts(section["ids"])
        rows.append(
            [
                "mean",
                section["model"],
                *metric_cells(section["mean"]),
                *(str(total[k]) for k in ("tp", "fp", "tn", "fn")),
            ]
        )

    header_line, *row_lines = _aligned([header, *rows])

    n_clips = sum(m["n_normal"] + m["n_anomaly"] for m in report["ids"].values())
    lines = [
        f"machine type {report['machine_type']}: {len(report['ids'])} ID(s), {n_clips} test clips; "
        f"pAUC with max FPR {MAX_FPR:g}; anomalous when score > threshold"
    ]
    lines += [f"threshold of {s['model']}: {s['threshold']:.6g}" for s in sections]
    rule = "-" * len(header_line)
    lines += [rule, header_line, rule]
    lines += row_lines[: len(rows) - len(sections)]
    lines += [rule, *row_lines[len(rows) - len(sections) :]]
    lines.append("(mean rows: metrics averaged over IDs, counts summed)")
    if all("kinds" in section for section in sections):
        lines += ["", *_kinds_table(sections)]
    return "\n".join(lines)


def _kinds_table(sections: Sequence[Mapping]) -> list[str]:
    kinds = sorted({k for section in sections for k in section["kinds"]["mean"]})
    header = ["ID", "model", *kinds]
    rows = []
    ids = sorted({mid for section in sections for mid in section["kinds"]["ids"]})
    for machine_id in [*ids, "mean"]:
        for section in sections:
            if machine_id == "mean":
                aucs = section["kinds"]["mean"]
            elif machine_id in section["kinds"]["ids"]:
                aucs = {k: v["auc"] for k, v in section["kinds"]["ids"][machine_id].items()}
            else:
                continue
            cells = [f"{aucs[k]:.3f}" if k in aucs else "-" for k in kinds]
            rows.append([machine_id, section["model"], *cells])
    title = f"AUC per fault kind (its clips against all normal clips of the ID; {ANOMALY_KINDS_FILE})"
    return [title, *_aligned([header, *rows])]


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines: the first two (text) columns left-aligned, the numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]


def print_table(report: Mapping, *, file: TextIO | None = None) -> None:
    """Print `format_table(report)` to `file` (stdout by default)."""
    print(format_table(report), file=file if file is not None else sys.stdout)


def _write_csv(path: Path, rows: Sequence[Sequence[object]]) -> Path:
    # The DCASE 2020 baseline's save_csv: csv.writer, "\n" line ends, no header.
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def write_dcase_csvs(scores: ModelScores, out_dir: Path) -> list[Path]:
    """``anomaly_score_<type>_id_XX.csv`` and ``decision_result_<type>_id_XX.csv`` per machine ID."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for machine_id, clips in scores.ids.items():
        names = [Path(f).name for f in clips.files]
        stem = f"{scores.machine_type}_id_{machine_id}"
        values = [float(s) for s in clips.scores]
        written.append(
            _write_csv(out_dir / f"anomaly_score_{stem}.csv", list(zip(names, values, strict=True)))
        )
        # 1 = anomalous, by the service's rule score > threshold.
        decisions = [int(v > scores.threshold) for v in values]
        written.append(
            _write_csv(out_dir / f"decision_result_{stem}.csv", list(zip(names, decisions, strict=True)))
        )
    return written


def _bin_profile(scores: ModelScores) -> dict[str, np.ndarray] | None:
    """A model's per-clip bin errors with the clips' names, IDs and labels and the bins' centres.

    These are the arrays of ``bin_errors.npz``; None when the scores lack bin errors.
    """
    id_scores = list(scores.ids.values())
    if not id_scores or any(c.bin_errors is None for c in id_scores):
        return None
    errors = np.array([row for c in id_scores for row in c.bin_errors], dtype=np.float64)
    centres = [np.nan] * errors.shape[1] if scores.bin_centres_hz is None else scores.bin_centres_hz
    return {
        "files": np.array([Path(f).name for c in id_scores for f in c.files]),
        "ids": np.array([mid for mid, c in scores.ids.items() for _ in c.files]),
        "labels": np.array([label for c in id_scores for label in c.labels]),
        "bin_errors": errors,
        "centre_hz": np.asarray(centres, dtype=np.float64),
    }


def write_bin_errors(profile: Mapping[str, np.ndarray], out_dir: Path) -> list[Path]:
    """``bins.csv`` (the error profile over mel bins) and ``bin_errors.npz`` (per clip) of `_bin_profile`.

    ``bins.csv`` has one row per mel bin: its centre frequency, the mean and
    standard deviation over the normal test clips of the clip's squared
    error in that bin, the mean over the anomalous clips, and their
    separation, (anomalous - normal) / normal sd. A clip's score is the
    mean of its row of ``bin_errors.npz`` (arrays ``files``, ``ids``,
    ``labels``, ``bin_errors`` of shape (clips, mels), ``centre_hz``).
    """
    errors, labels, centres = profile["bin_errors"], profile["labels"], profile["centre_hz"]
    normal, anomalous = errors[labels == 0], errors[labels == 1]
    header = ["bin", "centre_hz", "normal_error", "normal_sd", "anomaly_error", "separation"]
    rows: list[list[object]] = [header]
    nan = float("nan")
    for b in range(errors.shape[1]):
        mean, sd = (float(normal[:, b].mean()), float(normal[:, b].std())) if len(normal) else (nan, nan)
        excess = float(anomalous[:, b].mean()) if len(anomalous) else nan
        separation = (excess - mean) / sd if sd > 0 else nan
        cells = [f"{mean:.6g}", f"{sd:.6g}", f"{excess:.6g}", f"{separation:.4g}"]
        rows.append([b, round(float(centres[b]), 1), *cells])
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _write_csv(out_dir / BINS_FILE, rows)
    arrays = out_dir / BIN_ERRORS_FILE
    np.savez_compressed(arrays, **profile)
    return [table, arrays]


def write_report(
    report: Mapping, results: ModelScores | Sequence[ModelScores], out_dir: str | Path
) -> list[Path]:
    """Write ``report.json``, the DCASE CSVs and the figures; return the written paths.

    `results` are the per-clip scores the report was built from: the primary
    model first, then the compared one.
    """
    models = [results] if isinstance(results, ModelScores) else list(results)
    sections = _sections(report)
    if [m.model for m in models] != [s["model"] for s in sections]:
        raise ValueError(
            f"results are for {[m.model for m in models]}, the report for {[s['model'] for s in sections]}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / REPORT_FILE
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written = [report_path]
    profiles = {m.model: _bin_profile(m) for m in models}
    for index, scores in enumerate(models):
        folder = out if index == 0 else out / COMPARE_DIR
        written += write_dcase_csvs(scores, folder)
        profile = profiles[scores.model]
        if profile is not None:
            written += write_bin_errors(profile, folder)
        if "kinds" in sections[index]:
            written.append(write_kinds_csv(sections[index]["kinds"], folder))

    per_model = {m.model: {mid: (c.labels, c.scores) for mid, c in m.ids.items()} for m in models}
    thresholds = {m.model: m.threshold for m in models}
    written.append(plots.plot_roc(per_model, out / ROC_FIGURE, thresholds=thresholds))
    written.append(plots.plot_score_histograms(per_model, thresholds, out / HISTOGRAM_FIGURE))
    counts = {s["model"]: s["ids"] for s in sections}
    written.append(plots.plot_confusion_matrices(counts, out / CONFUSION_FIGURE))
    if all(p is not None for p in profiles.values()):
        written.append(plots.plot_bin_errors(profiles, out / BINS_FIGURE))
    return written


def write_kinds_csv(kinds: Mapping, out_dir: Path) -> Path:
    """``kinds.csv``: a header, machine_id,kind,n_anomaly,auc per row, then mean rows (n_anomaly summed)."""
    rows: list[list[object]] = [["machine_id", "kind", "n_anomaly", "auc"]]
    for machine_id, per_kind in kinds["ids"].items():
        rows += [[machine_id, kind, v["n_anomaly"], f"{v['auc']:.6f}"] for kind, v in per_kind.items()]
    for kind, auc in kinds["mean"].items():
        total = sum(row[kind]["n_anomaly"] for row in kinds["ids"].values() if kind in row)
        rows.append(["mean", kind, total, f"{auc:.6f}"])
    return _write_csv(Path(out_dir) / KINDS_FILE, rows)


def find_test_clips(data_root: str | Path, machine_type: str) -> dict[str, list[tuple[Path, int]]]:
    """Labelled test clips of `machine_type`, per machine ID.

    The folder is found as `training.dataset` finds it (``DATA_ROOT/<machine_type>/test/``,
    ``DATA_ROOT/test/`` or DATA_ROOT itself); of its WAV files those named
    ``normal_id_XX_*.wav`` get label 0 and ``anomaly_id_XX_*.wav`` label 1.
    Returns ``{id: [(path, label), ...]}``, IDs and paths sorted.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise MissingFolderError(f"data folder {root} does not exist")
    try:
        files = dataset.list_clips(root, machine_type=machine_type, split="test")
    except dataset.DatasetError as error:
        raise NoTestDataError(
            f"{error} (expected the DCASE layout {root}/{machine_type}/test/normal_id_XX_NNNNNNNN.wav)"
        ) from None
    clips: dict[str, list[tuple[Path, int]]] = {}
    for file in files:
        if file.label is not None:
            clips.setdefault(file.machine_id, []).append((file.path, int(file.label == "anomaly")))
    if not clips:
        folder = files[0].path.parent
        raise NoTestDataError(
            f"{folder} holds {len(files)} WAV file(s) but none named normal_id_XX_*.wav or "
            "anomaly_id_XX_*.wav; "
            "AUC needs that ground truth (the DCASE evaluation set's id_XX_*.wav clips are unlabelled)"
        )
    return dict(sorted(clips.items()))


def _select_ids(
    found: Mapping[str, list[tuple[Path, int]]],
    wanted: Sequence[str],
) -> dict[str, list[tuple[Path, int]]]:
    folder = next(iter(found.values()))[0][0].parent
    missing = [mid for mid in wanted if mid not in found]
    if missing:
        raise NoTestDataError(
            f"no test clips for machine ID(s) {', '.join(missing)} in {folder}; "
            f"it has clips for {', '.join(found) or 'no IDs'} (choose IDs to evaluate with --ids)"
        )
    selected = {mid: found[mid] for mid in wanted}
    for machine_id, clips in selected.items():
        n_anomaly = sum(label for _, label in clips)
        if n_anomaly == 0 or n_anomaly == len(clips):
            missing_kind = "anomalous" if n_anomaly == 0 else "normal"
            raise NoTestDataError(
                f"machine ID {machine_id} has no {missing_kind} test clips in {folder} "
                f"({len(clips) - n_anomaly} normal, {n_anomaly} anomalous): AUC needs both"
            )
    return selected


def _load_detector(model_dir: str | Path) -> Detector:
    folder = Path(model_dir)
    if not folder.is_dir():
        raise MissingFolderError(f"model folder {folder} does not exist")
    try:
        # One thread per session run: evaluation parallelises over clips instead (score_clips).
        return Detector(folder, intra_op_threads=1)
    except DetectorError as error:
        raise ModelLoadError(str(error)) from None


def _distinct_name(name: str, taken: str) -> str:
    return name if name != taken else f"{name} (compare)"


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def score_clips(
    detectors: Sequence[Detector],
    clips: Mapping[str, list[tuple[Path, int]]],
    *,
    channel: Channel = 0,
    progress: bool = True,
    names: Sequence[str] | None = None,
    workers: int | None = None,
) -> list[ModelScores]:
    """Score every clip with every detector; each clip is decoded once per sample rate.

    Clips are scored on `workers` threads (libsndfile, soxr, numpy's FFT and
    onnxruntime release the GIL, and an onnxruntime session may be run from
    several threads). Returns one `ModelScores` per detector, in the order
    given, with clips in the order of `clips`.
    """
    names = list(names) if names is not None else [d.name for d in detectors]
    jobs = [(machine_id, path, label) for machine_id, id_clips in clips.items() for path, label in id_clips]

    def score_one(job: tuple[str, Path, int]) -> list[Score]:
        machine_id, path, _ = job
        decoded: dict[int, np.ndarray] = {}
        scores = []
        for detector in detectors:
            rate = detector.params.sample_rate
            try:
                if rate not in decoded:
                    decoded[rate] = read_audio(path, sample_rate=rate, channel=channel).samples
                # As a request naming the clip's machine: only a fused model's score depends on it.
                scores.append(detector.score(decoded[rate], per_bin=True, machine_id=machine_id))
            except (AudioError, ClipTooShortError) as error:
                raise ClipError(f"{path}: {error}") from None
        return scores

    per_model: list[dict[str, dict[str, list]]] = [
        {mid: {"files": [], "labels": [], "scores": [], "bin_errors": []} for mid in clips} for _ in detectors
    ]
    bar = tqdm(total=len(jobs), unit="clip", desc=f"scoring {' + '.join(names)}", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    try:
        with bar:
            # map() yields in job order, so the lists line up with `clips` whatever the scheduling.
            for (machine_id, path, label), scores in zip(jobs, pool.map(score_one, jobs), strict=True):
                for collected, score in zip(per_model, scores, strict=True):
                    entry = collected[machine_id]
                    entry["files"].append(str(path))
                    entry["labels"].append(label)
                    entry["scores"].append(score.score)
                    entry["bin_errors"].append(score.bin_errors)
                bar.update(1)
    finally:
        # On a bad clip (or Ctrl-C) stop at once rather than scoring the clips still queued.
        pool.shutdown(wait=True, cancel_futures=True)
    return [
        ModelScores(
            model=name,
            machine_type=d.bundle.machine_type,
            threshold=d.threshold,
            ids=collected,
            bin_centres_hz=mel_centres_hz(d),
        )
        for name, d, collected in zip(names, detectors, per_model, strict=True)
    ]


def mel_centres_hz(detector: Detector) -> list[float]:
    """Centre (weighted mean frequency) of each of a detector's mel filters, in Hz."""
    params, basis = detector.params, detector.mel_basis
    freqs = np.arange(basis.shape[1]) * params.sample_rate / params.n_fft
    return [float(c) for c in basis @ freqs / np.maximum(basis.sum(axis=1), 1e-12)]


def evaluate_model(
    model_dir: str | Path,
    data_root: str | Path,
    *,
    out: str | Path | None = None,
    compare: str | Path | None = None,
    channel: Channel = 0,
    ids: Sequence[str] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Score the test clips of a model's machine type and IDs; build (and write) the report.

    Parameters
    ----------
    model_dir : an exported detector folder (model.onnx + threshold.json)
    data_root : DCASE-layout data, ``DATA_ROOT/<machine_type>/test/*.wav``
    out : folder for report.json, CSVs and figures; nothing is written when None
    compare : a second detector folder of the same machine type, scored on the same clips
    channel : channel of multi-channel files (0, as DCASE 2020 took from MIMII), or "mean"
    ids : machine IDs to evaluate; by default all the model was trained on
    progress : show a tqdm progress bar on stderr
    workers : threads scoring clips in parallel (default: up to 4, one per core)

    Returns
    -------
    The report dict (see the module docstring).

    Raises
    ------
    MissingFolderError, NoTestDataError, ModelLoadError, ClipError (all EvaluationError)
    """
    data = Path(data_root)
    if not data.is_dir():
        # Checked before loading the model: a mistyped path should not wait for onnxruntime.
        raise MissingFolderError(f"data folder {data} does not exist")
    detectors = [_load_detector(model_dir)]
    if compare is not None:
        other = _load_detector(compare)
        if other.bundle.machine_type != detectors[0].bundle.machine_type:
            raise EvaluationError(
                f"cannot compare a {detectors[0].bundle.machine_type!r} model with a "
                f"{other.bundle.machine_type!r} model"
            )
        detectors.append(other)
    machine_type = detectors[0].bundle.machine_type
    try:
        # "6" and "06" name the same ID; DCASE file names use two digits.
        wanted = [dataset.normalize_id(mid) for mid in (ids if ids else detectors[0].bundle.machine_ids)]
    except dataset.DatasetError as error:
        raise EvaluationError(str(error)) from None
    if not wanted:
        raise NoTestDataError(f"model {detectors[0].name} lists no machine IDs; choose them with --ids")
    clips = _select_ids(find_test_clips(data, machine_type), wanted)

    names = [detectors[0].name]
    if len(detectors) > 1:
        names.append(_distinct_name(detectors[1].name, names[0]))
    results = score_clips(detectors, clips, channel=channel, progress=progress, names=names, workers=workers)
    report = build_report(results[0], results[1] if len(results) > 1 else None)
    kinds = read_anomaly_kinds(next(iter(clips.values()))[0][0].parent)
    if kinds:
        for section, scores in zip(_sections(report), results, strict=True):
            section["kinds"] = kind_aucs(scores, kinds)
    if out is not None:
        write_report(report, results, out)
    return report


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``asd-train evaluate``; pair with `run_evaluate`."""
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="exported detector folder")
    parser.add_argument(
        "data_root",
        type=Path,
        metavar="DATA_ROOT",
        help="DCASE-layout data: DATA_ROOT/<machine_type>/test/{normal,anomaly}_id_XX_*.wav",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="folder for report.json, CSVs and figures (default: reports/<model>)",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="OTHER_MODEL_DIR",
        help="a second detector scored on the same clips, reported side by side",
    )
    parser.add_argument(
        "--ids", nargs="+", metavar="ID", help="machine IDs to evaluate (default: the model's)"
    )
    parser.add_argument(
        "--channel",
        type=parse_channel,
        default=0,
        help="channel of multi-channel files, or 'mean' (default: 0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="threads scoring clips in parallel (default: up to 4, one per core)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_out_dir(model_dir: Path, compare: Path | None = None) -> Path:
    name = Path(model_dir).name
    return Path("reports") / (name if compare is None else f"{name}-vs-{Path(compare).name}")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``asd-train evaluate`` from parsed arguments; returns the exit status."""
    out = args.out if args.out is not None else default_out_dir(args.model_dir, args.compare)
    try:
        report = evaluate_model(
            args.model_dir,
            args.data_root,
            out=out,
            compare=args.compare,
            channel=args.channel,
            ids=args.ids,
            progress=not args.no_progress,
            workers=args.workers,
        )
    except EvaluationError as error:
        print(f"asd-train evaluate: error: {error}", file=sys.stderr)
        return 2
    print_table(report)
    print(f"report written to {out}/")
    return 0

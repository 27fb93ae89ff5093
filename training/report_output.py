"""The evaluation report's outputs: the printed table, report.json, the DCASE CSVs, bin errors, figures.

Files written to the output folder (`write_report`)::

    report.json
    anomaly_score_<type>_id_XX.csv      filename,score   (no header, as the DCASE 2020 baseline)
    decision_result_<type>_id_XX.csv    filename,0|1     (1 = anomalous)
    compare/anomaly_score_... , compare/decision_result_...   the second model's CSVs
    bins.csv, bin_errors.npz            the error per mel bin (see `write_bin_errors`)
    compare/bins.csv, compare/bin_errors.npz                the second model's
    roc.png, score_histograms.png, confusion_matrices.png, bin_errors.png   both models in each figure
    kinds.csv, compare/kinds.csv        AUC per fault kind, when the test folder has anomaly_kinds.csv
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np

from training import plots
from training.clip_scores import ModelScores
from training.metrics import (
    MAX_FPR,
    MEAN_KEYS,
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


# The report as read (a Mapping) or as built (a dict); its compared model's section is the same kind.
SectionT = TypeVar("SectionT", bound=Mapping[str, Any])


def model_sections(report: SectionT) -> list[SectionT]:
    """The report's model sections: the primary model's (the report itself), then the compared one's."""
    return [report] + ([report["compare"]] if "compare" in report else [])


def format_table(report: Mapping[str, Any]) -> str:
    """The report as an aligned text table: one row per (ID, model), then the mean rows.

    Metrics in the mean rows are averaged over IDs (as DCASE does); their
    confusion counts are summed over IDs.
    """
    sections = model_sections(report)
    header = ["ID", "model", "AUC", "pAUC", "precision", "recall", "F1", "TP", "FP", "TN", "FN"]
    rows: list[list[str]] = []

    def metric_cells(values: Mapping[str, Any]) -> list[str]:
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


def _kinds_table(sections: Sequence[Mapping[str, Any]]) -> list[str]:
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


def print_table(report: Mapping[str, Any], *, file: TextIO | None = None) -> None:
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
    per_id = [c.bin_errors for c in id_scores if c.bin_errors is not None]
    if not id_scores or len(per_id) != len(id_scores):
        return None
    errors = np.array([row for rows in per_id for row in rows], dtype=np.float64)
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
    header: list[object] = ["bin", "centre_hz", "normal_error", "normal_sd", "anomaly_error", "separation"]
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
    np.savez_compressed(arrays, **profile)  # type: ignore[arg-type]  # numpy: a key could be allow_pickle
    return [table, arrays]


def write_report(
    report: Mapping[str, Any], results: ModelScores | Sequence[ModelScores], out_dir: str | Path
) -> list[Path]:
    """Write ``report.json``, the DCASE CSVs and the figures; return the written paths.

    `results` are the per-clip scores the report was built from: the primary
    model first, then the compared one.
    """
    models = [results] if isinstance(results, ModelScores) else list(results)
    sections = model_sections(report)
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
    complete = {name: p for name, p in profiles.items() if p is not None}
    if len(complete) == len(profiles):
        written.append(plots.plot_bin_errors(complete, out / BINS_FIGURE))
    return written


def write_kinds_csv(kinds: Mapping[str, Any], out_dir: Path) -> Path:
    """``kinds.csv``: a header, machine_id,kind,n_anomaly,auc per row, then mean rows (n_anomaly summed)."""
    rows: list[list[object]] = [["machine_id", "kind", "n_anomaly", "auc"]]
    for machine_id, per_kind in kinds["ids"].items():
        rows += [[machine_id, kind, v["n_anomaly"], f"{v['auc']:.6f}"] for kind, v in per_kind.items()]
    for kind, auc in kinds["mean"].items():
        total = sum(row[kind]["n_anomaly"] for row in kinds["ids"].values() if kind in row)
        rows.append(["mean", kind, total, f"{auc:.6f}"])
    return _write_csv(Path(out_dir) / KINDS_FILE, rows)

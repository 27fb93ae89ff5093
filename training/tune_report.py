"""`asd-train tune`'s output: the table of trials, the summary after it and tune.json."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from training.dataset import ClipFile
from training.pseudo import RANGES

if TYPE_CHECKING:
    from training.tune import TrialRecord, TuneOptions, TuneResult


def per_id_counts(files: Sequence[ClipFile]) -> dict[str, int]:
    return dict(sorted(Counter(f.machine_id for f in files).items()))


TABLE_HEAD = (
    f"{'trial':>5} {'frames':>6} {'epochs':>6} {'lr':>8} {'filters':>9} {'code':>4} {'pooling':>7} "
    f"{'scorer':>25} {'AUC':>6} {'pAUC':>6} {'s':>6}"
)


def trial_row(r: TrialRecord) -> str:
    """One trial as a row under `TABLE_HEAD`."""
    p, auc, pauc = r.params, "FAILED" if r.auc is None else f"{r.auc:.3f}", f"{r.pauc or 0:.3f}"
    scorer = f"{p['scorer']}/{p['fusion']}" if p["scorer"] != "cae" and "fusion" in p else p["scorer"]
    return (
        f"{r.number:>5} {p['frames']:>6} {p['epochs']:>6} {p['learning_rate']:>8.3g} {p['filters']:>9} "
        f"{p['bottleneck']:>4} {p['pooling']:>7} {scorer:>25} {auc:>6} {pauc if r.auc else '':>6} "
        f"{r.seconds:>6.0f}"
    )


def summary_lines(result: TuneResult) -> list[str]:
    """After the table: the failures' reasons, the best trial, its AUC per kind and its `fit` command."""
    assert result.best is not None
    lines = [f"trial {r.number} failed: {r.error}" for r in result.trials if r.error]
    kinds = ", ".join(f"{k} {v:.3f}" for k, v in result.best.per_kind.items())
    return [
        *lines,
        f"best: trial {result.best.number}, AUC {result.best.auc:.3f}; AUC per kind (mean over IDs): {kinds}",
        f"{len(result.trials)} trial(s) in {result.seconds:.0f} s; fit the best on all clips with:",
        shlex.join(result.fit_command),
    ]


def write_json(path: Path, result: TuneResult, options: TuneOptions, command: str | None) -> None:
    best = result.best
    document = {
        "command": command,
        "objective": "mean over machine IDs of the AUC of pseudo-anomalies against held-out normal clips",
        "options": asdict(options),
        "pseudo_anomaly_ranges": {kind: RANGES[kind] for kind in options.kinds},
        "train_clips_per_id": per_id_counts(result.train),
        "held_out_clips_per_id": per_id_counts(result.held_out),
        "held_out_files": [f.path.name for f in result.held_out],
        "skipped": [{"file": s.path.name, "reason": s.reason} for s in result.skipped],
        "seconds": round(result.seconds, 1),
        "trials": [asdict(r) for r in result.trials],
        "best": None if best is None else asdict(best),
        "best_fit_command": None if best is None else shlex.join(result.fit_command),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    partial.replace(path)  # a reader never sees half a file

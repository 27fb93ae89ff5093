"""`python -m bench.int8_quality WORK`: does the int8 graph detect as well as fp32 on every benchmark data set?

Issue 15: the default model ships int8 only if, on every data set of the quality benchmark
(`asd-train benchmark --work WORK`), its AUC is within `MAX_AUC_DROP` (0.005) of the fp32
detector's. Quantizing changes only the graph's arithmetic, not the training, so this takes
each fp32 CAE folder the benchmark fitted (`fits/<size>/<data set>/<detector>_fit<S>/`),
quantizes it with `training.quantize.quantize_detector` calibrated on that data set's own
training clips (the patches `fit --precision int8` calibrates on; the thresholds it refits
do not enter an AUC), and evaluates both folders on the data set's test clips as the
benchmark does (`training.report.evaluate_model`, each clip with its machine ID).

The int8 folders go to `WORK/int8/...` and are re-used when their fp32 twin has not changed
(its model hash). A cell whose quantization is refused (the parity gate) or whose evaluation
fails is a FAILED row with its reason, and the exit status is 1.

    python -m bench.int8_quality reports/quality --detectors cae --out reports/int8.md
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_AUC_DROP = 0.005


@dataclass
class Row:
    data_set: str
    detector: str
    fp32: dict[str, float] = field(default_factory=dict)  # machine ID -> AUC
    int8: dict[str, float] = field(default_factory=dict)
    fp32_pauc: dict[str, float] = field(default_factory=dict)
    int8_pauc: dict[str, float] = field(default_factory=dict)
    failed: str | None = None
    seconds: float = 0.0

    @property
    def drop(self) -> float:
        """fp32 mean AUC minus int8 mean AUC (positive: int8 is worse)."""
        return float(np.mean(list(self.fp32.values())) - np.mean(list(self.int8.values())))

    @property
    def worst_id_drop(self) -> float:
        return max(self.fp32[mid] - self.int8[mid] for mid in self.fp32)


def find_cells(work: Path, detectors: Sequence[str]) -> list[tuple[Path, Path, str, str]]:
    """(fp32 folder, data set root, data set name, detector) of every fitted cell, in a stable order."""
    cells = []
    for folder in sorted((work / "fits").glob("*/*/*_fit*")):
        if not folder.is_dir() or not (folder / "threshold.json").is_file():
            continue
        detector = folder.name.rsplit("_fit", 1)[0]
        if detector not in detectors:
            continue
        data_root = work / "data" / folder.parent.parent.name / folder.parent.name
        cells.append((folder, data_root, folder.parent.name, detector))
    return cells


def _family(data_root: Path) -> str:
    families = [p for p in data_root.iterdir() if p.is_dir()]
    if len(families) != 1:
        raise ValueError(f"{data_root} should hold one machine-type folder, found {len(families)}")
    return families[0].name


def _aucs(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    ids = report["ids"]
    return {mid: float(v["auc"]) for mid, v in ids.items()}, {mid: float(v["pauc"]) for mid, v in ids.items()}


def measure(fp32: Path, data_root: Path, out: Path, *, name: str, detector: str) -> Row:
    from training.errors import TrainingError
    from training.quantize import quantize_detector
    from training.report import evaluate_model

    row = Row(data_set=name, detector=detector)
    began = time.perf_counter()
    try:
        family = _family(data_root)
        source = json.loads((fp32 / "threshold.json").read_text())
        marker = out.parent / f"{out.name}.source.json"
        reuse = out.is_dir() and marker.is_file() and json.loads(marker.read_text()) == source.get("model")
        if not reuse:
            if out.exists():
                shutil.rmtree(out)
            quantize_detector(fp32, data_root / family / "train", out)
            marker.write_text(json.dumps(source.get("model"), sort_keys=True))
        ids = sorted(source.get("threshold", {}).get("per_id") or {}) or None
        row.fp32, row.fp32_pauc = _aucs(evaluate_model(fp32, data_root, ids=ids, progress=False))
        row.int8, row.int8_pauc = _aucs(evaluate_model(out, data_root, ids=ids, progress=False))
    except (TrainingError, OSError, ValueError) as error:
        row.failed = f"{type(error).__name__}: {error}"
    row.seconds = round(time.perf_counter() - began, 1)
    return row


def render(rows: Sequence[Row], *, cpu: str) -> str:
    lines = [
        "# int8 against fp32 on the quality benchmark's data sets",
        "",
        f"`python -m bench.int8_quality`, {cpu}. Mean AUC / pAUC over the machine IDs; drop = fp32 - int8;",
        f"the gate of issue 15 is a drop of at most {MAX_AUC_DROP} on every data set.",
        "",
        "| data set | detector | fp32 AUC / pAUC | int8 AUC / pAUC | drop (mean) | worst ID drop | within |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.failed:
            lines.append(f"| {r.data_set} | {r.detector} | FAILED: {r.failed} | | | | no |")
            continue
        f_auc, f_pauc = np.mean(list(r.fp32.values())), np.mean(list(r.fp32_pauc.values()))
        i_auc, i_pauc = np.mean(list(r.int8.values())), np.mean(list(r.int8_pauc.values()))
        ok = "yes" if r.drop <= MAX_AUC_DROP else "**no**"
        lines.append(
            f"| {r.data_set} | {r.detector} | {f_auc:.4f} / {f_pauc:.4f} | {i_auc:.4f} / {i_pauc:.4f} "
            f"| {r.drop:+.4f} | {r.worst_id_drop:+.4f} | {ok} |"
        )
    good = [r for r in rows if not r.failed]
    if good:
        drops = [r.drop for r in good]
        lines += [
            "",
            f"{len(good)} data set(s); drop mean {np.mean(drops):+.4f}, largest {max(drops):+.4f}; "
            f"within {MAX_AUC_DROP} on {sum(d <= MAX_AUC_DROP for d in drops)} of {len(good)}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.int8_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("work", type=Path, help="the quality benchmark's work folder (--work)")
    parser.add_argument("--detectors", default="cae", help="comma-separated detector names (default cae)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    from bench.machine import describe

    if not (args.work / "fits").is_dir():
        print(
            f"int8_quality: error: {args.work} has no fits/ folder: run asd-train benchmark first",
            file=sys.stderr,
        )
        return 2
    cells = find_cells(args.work, [d.strip() for d in args.detectors.split(",") if d.strip()])
    if not cells:
        print(
            f"int8_quality: error: no fitted {args.detectors} folders under {args.work}/fits", file=sys.stderr
        )
        return 2
    rows = []
    for fp32, data_root, name, detector in cells:
        out = args.work / "int8" / fp32.relative_to(args.work / "fits")
        out.parent.mkdir(parents=True, exist_ok=True)
        row = measure(fp32, data_root, out, name=name, detector=detector)
        status = f"FAILED: {row.failed}" if row.failed else f"drop {row.drop:+.4f}"
        print(f"{name} {detector}: {status} ({row.seconds:.0f} s)", flush=True)
        rows.append(row)
    machine = describe()
    text = render(rows, cpu=f"{machine.cpu}, {machine.cores} cores")
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

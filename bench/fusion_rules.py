"""`python -m bench.fusion_rules WORK`: how would other ways of combining the two scorers have scored?

A fused detector (`fit --scorer cae+envelope`, the default) standardises each scorer's raw
score per machine ID on held-out normal clips and averages the z-scores (`service.scorers.fuse`).
This takes every fused CAE folder that `asd-train benchmark --work WORK` fitted, scores its data
set's test clips once through `Detector.score_file` (with each clip's machine ID, as a request
naming it), and recomputes the clip score from the stored standardisation under other rules:
the CAE and the envelope alone, the mean and the max of all the folder's scorers' z-scores, and
the folder's own rule (which must reproduce the benchmark). No refit: the rules differ only
after the scorers. AUC and pAUC per ID, averaged, per data set and over all of them.

    python -m bench.fusion_rules reports/quality --detectors cae
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.int8_quality import find_cells
from service.detector import Detector
from service.scorers import FUSION_OFFSET, fuse
from training.clip_scores import find_test_clips
from training.metrics import detection_metrics

Rule = Callable[[np.ndarray, str], np.ndarray]
# Each rule maps the z-scores of a folder's scorers, shape (n_clips, n_scorers) in `Scoring.scorers`
# order, and the folder's own fusion rule to clip scores.
RULES: dict[str, Rule] = {
    "cae alone": lambda z, own: z[:, 0],
    "envelope alone": lambda z, own: z[:, 1],
    "mean": lambda z, own: np.asarray(fuse(list(z.T), offset=FUSION_OFFSET, rule="mean")),
    "max": lambda z, own: np.asarray(fuse(list(z.T), offset=FUSION_OFFSET, rule="max")),
    "the folder's own": lambda z, own: np.asarray(fuse(list(z.T), offset=FUSION_OFFSET, rule=own)),
}


def z_scores(detector: Detector, path: Path, machine_id: str) -> list[float]:
    """The z-score of each of the folder's scorers (`Scoring.scorers` order) for one clip under its ID's entry."""
    scoring = detector.scoring
    assert scoring is not None and scoring.fused
    scored = detector.score_file(path, machine_id=machine_id)
    assert scored.components is not None
    _, entry = scoring.entry_for(machine_id)
    assert entry is not None
    return [
        (scored.components[name] - entry.standardisation[name].mean) / entry.standardisation[name].std
        for name in scoring.scorers
    ]


def study(folder: Path, data_root: Path) -> dict[str, dict[str, float]]:
    """Rule -> {"auc", "pauc"} means over the IDs of one fused folder on its data set."""
    meta = json.loads((folder / "threshold.json").read_text(encoding="utf-8"))
    detector = Detector(folder, intra_op_threads=1)
    if detector.scoring is None or not detector.scoring.fused:
        raise ValueError(f"{folder} is not a fused detector")
    own = detector.scoring.fusion
    per_rule: dict[str, list[tuple[float, float]]] = {name: [] for name in RULES}
    for machine_id, clips in find_test_clips(data_root, meta["machine_type"]).items():
        z = np.asarray([z_scores(detector, path, machine_id) for path, _ in clips], dtype=np.float64)
        labels = [label for _, label in clips]
        for name, rule in RULES.items():
            m = detection_metrics(labels, rule(z, own), threshold=float("inf"))
            per_rule[name].append((float(m["auc"]), float(m["pauc"])))
    return {
        name: {"auc": float(np.mean([a for a, _ in v])), "pauc": float(np.mean([p for _, p in v]))}
        for name, v in per_rule.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fusion_rules", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("work", type=Path, help="the quality benchmark's work folder (--work)")
    parser.add_argument(
        "--detectors", default="cae", help="comma-separated fused detector names (default cae)"
    )
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    cells = find_cells(args.work, [d.strip() for d in args.detectors.split(",") if d.strip()])
    if not cells:
        print(
            f"fusion_rules: error: no fitted {args.detectors} folders under {args.work}/fits", file=sys.stderr
        )
        return 2
    table: dict[str, dict[str, dict[str, float]]] = {}
    failed = 0
    for folder, data_root, _, _ in cells:
        try:
            table[f"{folder.parent.name}/{folder.name}"] = study(folder, data_root)
        except (OSError, ValueError) as error:
            print(f"fusion_rules: {folder}: {error}", file=sys.stderr)
            failed += 1
    print("| data set | " + " | ".join(RULES) + " |")
    print("| --- |" + " --- |" * len(RULES))
    for name, rules in [*table.items(), ("mean", _means(table))]:
        row = " | ".join(f"{rules[r]['auc']:.3f} / {rules[r]['pauc']:.3f}" for r in RULES)
        print(f"| {name} | {row} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    return 1 if failed else 0


def _means(table: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        r: {k: float(np.mean([rules[r][k] for rules in table.values()])) for k in ("auc", "pauc")}
        for r in RULES
    }


if __name__ == "__main__":
    sys.exit(main())

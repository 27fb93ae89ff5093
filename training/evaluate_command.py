"""`asd-train evaluate`: its arguments and its run (`training.report.evaluate_model`, then the table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.errors import (
    EvaluationError,
)
from training.options import add_channel_argument
from training.report import evaluate_model
from training.report_output import print_table


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
    add_channel_argument(parser)
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

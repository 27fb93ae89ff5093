"""`asd-train`: make synthetic data, fit a detector, evaluate it, look at clips.

    asd-train synth OUT [--machine-type slider] [--ids 00,02,04,06] [--train N] ...
    asd-train fit DATA_ROOT --out models/NAME [--machine-type slider] [--ids 00,02] [--arch cae|dense] ...
    asd-train quantize MODEL_DIR NORMAL_DIR --out NEW
    asd-train tune DATA_ROOT [--trials 20] [--timeout S] [--out tune.json] [--fit-best MODEL_DIR]
    asd-train evaluate MODEL_DIR DATA_ROOT [--out DIR] [--compare OTHER_MODEL_DIR]
    asd-train explore WAV... [--out DIR] [--model MODEL_DIR]

A problem the user can fix (missing folder, no clips, bad option, a model
that does not export faithfully: any `training.errors.TrainingError` or
`service.errors.ServiceError`) ends the command with a one-line message on
stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.errors import ServiceError
from training.dataset import parse_ids
from training.errors import CliError, DatasetError, SynthError, TrainingError
from training.native_logs import filter_native_stderr
from training.options import add_channel_argument

EXIT_USAGE = 2


def _ids(text: str) -> tuple[str, ...] | None:
    try:
        return parse_ids(text)
    except DatasetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"takes positive integers, got {text!r}")
    return values


def _int_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes N or LOW:HIGH, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"needs 1 <= LOW <= HIGH, got {text!r}")
    return bounds


def _kinds(text: str) -> tuple[str, ...]:
    from training.pseudo import parse_kinds

    try:
        return parse_kinds(text)
    except SynthError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asd-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic data set in the DCASE 2020 Task 2 layout")
    synth.add_argument("out", type=Path, help="folder to write OUT/<machine_type>/{train,test}/ into")
    synth.add_argument("--machine-type", default="slider", help="slider (default), fan, pump or valve")
    synth.add_argument(
        "--ids", type=_ids, default=("00", "02", "04", "06"), help="comma-separated, e.g. 00,02"
    )
    synth.add_argument("--train", type=int, default=300, help="normal training clips per ID")
    synth.add_argument("--test-normal", type=int, default=100, help="normal test clips per ID")
    synth.add_argument("--test-anomaly", type=int, default=100, help="anomalous test clips per ID")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--snr-db",
        default=None,
        metavar="DB|LOW:HIGH",
        help="machine-to-background level in dB, or a range drawn uniformly per clip "
        "(write --snr-db=-6:6); default: 6 for slider, -6:6 for fan, pump and valve",
    )
    synth.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    synth.set_defaults(handler=_synth)

    fit = sub.add_parser("fit", help="train, calibrate and export a detector")
    fit.add_argument(
        "data_root", type=Path, help="DCASE root, <root>/<machine_type>, a train folder or WAV folder"
    )
    fit.add_argument("--out", type=Path, required=True, help="model folder to write, e.g. models/slider")
    fit.add_argument("--machine-type", default="slider")
    fit.add_argument(
        "--ids", type=_ids, default=None, help="comma-separated machine IDs (default: all found)"
    )
    fit.add_argument("--arch", choices=("cae", "dense"), default="cae")
    fit.add_argument(
        "--epochs", type=int, default=None, help="maximum epochs (early stopping may end sooner)"
    )
    fit.add_argument("--batch-size", type=int, default=None)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--frames",
        type=int,
        default=None,
        help="patch width in frames (cae 8: a multiple of 8, or 1, 2, 4; dense 5)",
    )
    fit.add_argument("--patch-hop", type=int, default=None, help="frames between patches (cae 8, dense 1)")
    fit.add_argument(
        "--val-fraction",
        type=_rate,
        default=0.1,
        help="holdout calibration: clips per ID held out (at least 1)",
    )
    fit.add_argument(
        "--calibration",
        choices=("auto", "cross-fit", "holdout"),
        default="auto",
        help="where the threshold's normal scores come from: out-of-fold scores of a k-fold "
        "cross-fit (every clip counts; k + 1 trainings) or a holdout; auto: cross-fit while "
        "an ID has fewer than 250 clips",
    )
    fit.add_argument("--folds", type=int, default=5, help="folds of the cross-fit (default 5)")
    fit.add_argument("--false-alarm-rate", type=_rate, default=None, help="target R; threshold quantile 1-R")
    add_channel_argument(fit, "channel index or 'mean' (default 0)")
    fit.add_argument("--patience", type=int, default=5, help="epochs without val_loss gain before stopping")
    fit.add_argument("--learning-rate", type=float, default=1e-3)
    fit.add_argument("--filters", default=None, help="CAE encoder widths, e.g. 16,32,64")
    fit.add_argument(
        "--bottleneck",
        type=int,
        default=None,
        help="CAE code size (units of the dense bottleneck, default 16)",
    )
    fit.add_argument(
        "--code-frames",
        type=int,
        default=None,
        help="CAE: time cells left before the code; time pools only down to them (default 2)",
    )
    fit.add_argument(
        "--pooling",
        choices=("mean", "max", "topk", "gwrp"),
        default="mean",
        help="patch errors into the clip score: mean (default), max, topk (mean of the k "
        "largest) or gwrp (rank weights r**i)",
    )
    fit.add_argument(
        "--pooling-param",
        type=float,
        default=None,
        help="topk: a fraction of the patches below 1 or a count (default 0.1); "
        "gwrp: r in (0, 1] (default 0.9)",
    )
    fit.add_argument(
        "--scorer",
        choices=("cae", "cae+envelope", "cae+envelope+spectrum"),
        default=None,
        help="default: the architecture's (training.fit_options.ARCH_SCORERS); "
        "cae: the autoencoder's reconstruction error alone; cae+envelope: fuse the CAE with a Gaussian on each clip's mean level per band, "
        "cae+envelope+spectrum: also with a Gaussian on its fine-resolution long-term spectrum, "
        "each standardised per machine ID on held-out normal scores",
    )
    fit.add_argument(
        "--fusion",
        choices=("mean", "max"),
        default=None,
        help="a fused scorer: combine the z-scores by their mean or the largest (max) "
        "(default: training.fit_options.DEFAULT_FUSION)",
    )
    fit.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default="fp32",
        help="int8: export the graph quantized (static, calibrated on training patches), thresholds "
        "fitted to its scores; refused unless its scores match fp32's (training.quantize)",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    fit.set_defaults(handler=_fit)

    calibrate = sub.add_parser(
        "calibrate", help="refit a detector's threshold(s) on a site's normal recordings, without retraining"
    )
    _add_folders(calibrate, model="detector folder", normal="folder of normal WAVs")
    calibrate.add_argument(
        "--false-alarm-rate", type=_rate, default=None, help="target R (default: the model's current target)"
    )
    calibrate.add_argument(
        "--machine-id", default=None, help="take every clip as this ID's and refit only its threshold"
    )
    add_channel_argument(calibrate, "channel index or 'mean' (default 0)")
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(handler=_calibrate)

    quantize = sub.add_parser(
        "quantize", help="an int8 copy of an fp32 detector, its thresholds refitted on normal recordings"
    )
    _add_folders(
        quantize,
        model="fp32 detector folder",
        normal="normal WAVs for the activation ranges, the parity gate and the thresholds: a folder",
    )
    add_channel_argument(quantize, "channel index or 'mean' (default 0)")
    quantize.add_argument("--quiet", action="store_true", help="no progress bar")
    quantize.set_defaults(handler=_quantize)

    benchmark = sub.add_parser(
        "benchmark", help="fit and evaluate detector configurations over families, seeds and SNRs; QUALITY.md"
    )
    benchmark.add_argument("--out", type=Path, required=True, help="markdown file to write, e.g. QUALITY.md")
    benchmark.add_argument("--json", type=Path, default=None, help="every number (default: OUT with .json)")
    benchmark.add_argument(
        "--work",
        type=Path,
        default=Path("reports/quality"),
        help="data sets, detector folders and logs, re-used by later runs",
    )
    benchmark.add_argument(
        "--quick",
        action="store_true",
        help="a small grid for smoke checks (2 IDs, 20 + 10 + 10 clips, one seed, "
        "2 epochs, holdout calibration)",
    )
    benchmark.add_argument("--families", default=None, help="comma-separated (default slider,fan,pump,valve)")
    benchmark.add_argument("--seeds", default=None, help="synthesiser seeds (default 0,1)")
    benchmark.add_argument(
        "--snr",
        default=None,
        help="SNR variants: 'default' (the family's own), dB, or LOW:HIGH drawn per clip "
        "(default: default,-6:0; write --snr=-6:0 when the list starts with '-')",
    )
    benchmark.add_argument("--detectors", default=None, help="configurations to run (default cae,dense)")
    benchmark.add_argument(
        "--detector",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="add (or redefine) a configuration: NAME and its `fit` arguments, shell-split; may repeat",
    )
    benchmark.add_argument(
        "--fit-seeds", default=None, help="fit seeds of every cell (default: the data set's seed)"
    )
    benchmark.add_argument(
        "--fit-args",
        default=None,
        metavar="ARGS",
        help="`fit` arguments for every configuration, before its own (write --fit-args='--epochs 2')",
    )
    benchmark.add_argument("--ids", default=None, help="machine IDs (default 00,02,04,06)")
    benchmark.add_argument("--train", default=None, help="training clips per ID (default 300)")
    benchmark.add_argument("--test-normal", default=None, help="normal test clips per ID (100)")
    benchmark.add_argument("--test-anomaly", default=None, help="anomalous test clips per ID (100)")
    benchmark.add_argument("--duration", default=None, help="seconds per clip (default 10)")
    benchmark.set_defaults(handler=_benchmark)

    tune = sub.add_parser(
        "tune",
        help="search fit's hyperparameters (Optuna), scored on pseudo-anomalies made from your normal clips",
    )
    tune.add_argument(
        "data_root", type=Path, help="normal clips: DCASE root, <root>/<machine_type>, a train or WAV folder"
    )
    tune.add_argument(
        "--out", type=Path, default=Path("tune.json"), help="JSON of every trial and the best (tune.json)"
    )
    tune.add_argument("--machine-type", default="slider")
    tune.add_argument(
        "--ids", type=_ids, default=None, help="comma-separated machine IDs (default: all found)"
    )
    tune.add_argument("--trials", type=int, default=20, help="trials, each one training (default 20)")
    tune.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts")
    tune.add_argument("--seed", type=int, default=0, help="split, pseudo-anomalies, sampler and fits")
    tune.add_argument(
        "--holdout-fraction",
        type=_rate,
        default=0.2,
        help="clips per ID held out to score, never trained on (at least 5; default 0.2)",
    )
    tune.add_argument(
        "--val-fraction", type=_rate, default=0.1, help="each trial's own holdout for early stopping"
    )
    tune.add_argument(
        "--epochs", type=_int_range, default=(4, 12), metavar="LOW:HIGH", help="epochs range (4:12)"
    )
    tune.add_argument("--frames", type=_int_list, default=(4, 8, 16), help="patch widths to try (4,8,16)")
    tune.add_argument(
        "--kinds",
        type=_kinds,
        default=None,
        help="pseudo-anomalies: clicks,tone,band-noise,gain,speed (default: all)",
    )
    add_channel_argument(tune, "channel index or 'mean' (default 0)")
    tune.add_argument(
        "--fit-best", type=Path, default=None, metavar="MODEL_DIR", help="then fit the best on all clips"
    )
    tune.add_argument("--quiet", action="store_true", help="no progress bars in --fit-best's fit")
    tune.set_defaults(handler=_tune)

    from training.evaluate_command import add_evaluate_arguments, run_evaluate
    from training.explore import add_explore_arguments, run_explore

    evaluate = sub.add_parser(
        "evaluate", help="AUC, pAUC, precision, recall, F1 per machine ID; report.json, CSVs, figures"
    )
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=run_evaluate)

    explore = sub.add_parser(
        "explore", help="waveform, PSD, spectrogram, chromagram, mel (and reconstruction)"
    )
    add_explore_arguments(explore)
    explore.set_defaults(handler=run_explore)

    from service.archive import add_arguments as add_score_arguments

    score = sub.add_parser(
        "score", help="score an archive of recordings with an exported detector into a CSV (= asd-score)"
    )
    add_score_arguments(score)
    score.set_defaults(handler=lambda args: _score(args, score))
    return parser


def _add_folders(parser: argparse.ArgumentParser, *, model: str, normal: str) -> None:
    """MODEL_DIR NORMAL_DIR --out NEW, as `calibrate` and `quantize` take them."""
    parser.add_argument("model_dir", type=Path, help=f"{model} (model.onnx + threshold.json)")
    parser.add_argument(
        "normal_dir", type=Path, help=f"{normal}, or a DCASE root (<root>/<machine_type>/train/)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (may be MODEL_DIR)")


def _score(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from service.archive import run_args

    return run_args(args, parser)


def _synth(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from training.synth import generate_dataset, parse_snr

    ids = args.ids or ("00",)
    try:
        snr_db = None if args.snr_db is None else parse_snr(args.snr_db)
    except SynthError as error:
        raise CliError(f"--snr-db: {error}") from None
    total = len(ids) * (max(args.train, 0) + max(args.test_normal, 0) + max(args.test_anomaly, 0))
    with tqdm(total=total, desc="synth", unit="clip") as bar:
        summary = generate_dataset(
            args.out,
            machine_type=args.machine_type,
            ids=ids,
            n_train=args.train,
            n_test_normal=args.test_normal,
            n_test_anomaly=args.test_anomaly,
            seed=args.seed,
            duration=args.duration,
            snr_db=snr_db,
            progress=lambda done, _total: bar.update(done - bar.n),
        )
    print(
        f"wrote {summary.n_train} train, {summary.n_test_normal} normal test and {summary.n_test_anomaly} "
        f"anomalous test clips ({summary.seconds / 3600:.2f} h) to {summary.root}"
    )


def _fit(args: argparse.Namespace) -> None:
    from training.fit import run_fit
    from training.fit_options import FitOptions
    from training.model import CaeConfig

    cae = CaeConfig()
    if args.filters:
        try:
            filters = tuple(int(f) for f in args.filters.split(","))
        except ValueError:
            raise CliError(f"--filters takes comma-separated integers, got {args.filters!r}") from None
        cae = replace(cae, filters=filters)
    if args.bottleneck is not None:
        cae = replace(cae, bottleneck=args.bottleneck)
    if args.code_frames is not None:
        cae = replace(cae, code_frames=args.code_frames)
    options = FitOptions(
        machine_type=args.machine_type,
        ids=args.ids,
        arch=args.arch,
        frames=args.frames,
        patch_hop=args.patch_hop,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        patience=args.patience,
        false_alarm_rate=args.false_alarm_rate,
        channel=args.channel,
        learning_rate=args.learning_rate,
        cae=cae,
        calibration=args.calibration,
        folds=args.folds,
        pooling=args.pooling,
        pooling_param=args.pooling_param,
        scorer=args.scorer,
        fusion=args.fusion,
        precision=args.precision,
        progress=not args.quiet,
    )
    run_fit(args.data_root, args.out, options, command=shlex.join(["asd-train", *args.argv]))


def _clip_bar(desc: str, args: argparse.Namespace) -> Any:
    """A progress bar counting clips, off with --quiet."""
    from tqdm import tqdm

    return tqdm(desc=desc, unit="clip", disable=args.quiet)


def _calibrate(args: argparse.Namespace) -> None:
    # No TensorFlow import on this path: a recalibration takes seconds, not TensorFlow's start-up.
    from training.calibrate import format_summary, recalibrate

    command = shlex.join(["asd-train", *args.argv])
    with _clip_bar("calibrate", args) as bar:
        result = recalibrate(
            args.model_dir,
            args.normal_dir,
            args.out,
            false_alarm_rate=args.false_alarm_rate,
            machine_id=args.machine_id,
            channel=args.channel,
            command=command,
            progress=bar.update,
        )
    print(format_summary(result))


def _quantize(args: argparse.Namespace) -> None:
    # No TensorFlow on this path either: onnxruntime quantizes and scores.
    from training.quantize import format_summary, quantize_detector

    with _clip_bar("quantize", args) as bar:
        result = quantize_detector(
            args.model_dir,
            args.normal_dir,
            args.out,
            channel=args.channel,
            command=shlex.join(["asd-train", *args.argv]),
            progress=bar.update,
        )
    print(format_summary(result))


def _benchmark(args: argparse.Namespace) -> int:
    # Library code (training.benchmark*) never imports this module; the options are parsed there.
    from training.benchmark import build_config
    from training.benchmark_run import run_benchmark

    config = build_config(
        quick=args.quick,
        families=args.families,
        seeds=args.seeds,
        snr=args.snr,
        detectors=args.detectors,
        definitions=args.detector,
        fit_seeds=args.fit_seeds,
        fit_args=args.fit_args,
        ids=args.ids,
        n_train=args.train,
        n_test_normal=args.test_normal,
        n_test_anomaly=args.test_anomaly,
        duration=args.duration,
    )
    outcome = run_benchmark(
        config,
        work=args.work,
        out=args.out,
        json_out=args.json,
        command=shlex.join(["asd-train", *args.argv]),
    )
    print(f"wrote {args.out} and {args.json or args.out.with_suffix('.json')}")
    # 1, not 2: the options were fine, but some cells could not be made (listed as FAILED).
    return 1 if outcome.failed else 0


def _tune(args: argparse.Namespace) -> None:
    from training.pseudo import KINDS
    from training.tune import SearchSpace, TuneOptions, run_tune

    options = TuneOptions(
        machine_type=args.machine_type,
        ids=args.ids,
        trials=args.trials,
        timeout=args.timeout,
        seed=args.seed,
        holdout_fraction=args.holdout_fraction,
        val_fraction=args.val_fraction,
        channel=args.channel,
        kinds=args.kinds or KINDS,
        space=replace(SearchSpace(), frames=args.frames, epochs=args.epochs),
    )
    result = run_tune(
        args.data_root,
        options,
        out_json=args.out,
        best_out=args.fit_best or Path("models") / f"{args.machine_type}-tuned",
        command=shlex.join(["asd-train", *args.argv]),
    )
    print(f"wrote {args.out}")
    if args.fit_best is not None:
        # The printed command itself, parsed as `fit` parses it: what is fitted is what was shown.
        argv = [*result.fit_command[1:], *(["--quiet"] if args.quiet else [])]
        fit_args = build_parser().parse_args(argv)
        fit_args.argv = argv
        _fit(fit_args)


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU features, oneDNN) buries the
    # progress; a user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in threshold.json as the reproducing command
    # Every error a user can fix is in one of the two trees (or is a file the system refuses).
    try:
        status = args.handler(args)
    except (TrainingError, ServiceError, OSError) as error:
        print(f"asd-train {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"asd-train {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


def console() -> int:
    """The `asd-train` command: `main` with TensorFlow's native log lines filtered out of stderr.

    Only here, not in `main`: tests call `main` in-process, where stderr belongs to pytest.
    """
    if os.environ.get("ASD_TF_LOGS") != "1":  # ASD_TF_LOGS=1 shows them, for debugging TensorFlow
        filter_native_stderr()
    return main()


if __name__ == "__main__":
    sys.exit(console())

"""One benchmark cell's fit: the `asd-train fit` command, run as a subprocess, and a guess of its time.

Fits run as ``python -m training.cli fit`` subprocesses, not through `run_fit`:
a configuration *is* a list of `fit` arguments, so every option `fit` has or
gains works here without mapping arguments to `FitOptions` (and without
importing `training.cli`); a crash, a kill for memory or TensorFlow's global
state ends one cell, not the benchmark; and each fit is exactly the command a
user would run, recorded in its threshold.json. TensorFlow's start-up per fit
is small beside the minutes a fit of the full grid takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.benchmark import Config, DataSpec


@dataclass(frozen=True)
class FitRun:
    returncode: int
    seconds: float
    output: str  # stdout and stderr of the fit


def fit_arguments(
    config: Config,
    spec: DataSpec,
    detector: str,
    fit_seed: int,
    *,
    data: str,
    out: str,
) -> list[str]:
    """`asd-train fit` arguments of one cell; the configuration's own come last, so they win."""
    return [
        "fit",
        data,
        "--out",
        out,
        "--machine-type",
        spec.family,
        "--ids",
        ",".join(config.ids),
        "--seed",
        str(fit_seed),
        "--quiet",
        *config.fit_args,
        *config.detectors[detector],
    ]


def recorded_command(model_dir: Path) -> str | None:
    """The command in a detector folder's threshold.json, or None without a complete folder."""
    try:
        if not (model_dir / "model.onnx").is_file():
            return None
        data = json.loads((model_dir / "threshold.json").read_text(encoding="utf-8"))
        command: str | None = data["training"]["command"]
        return command
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_fit_command(arguments: Sequence[str], *, cwd: Path) -> FitRun:
    """Run ``python -m training.cli <arguments>`` in `cwd`."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "training.cli", *arguments],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    return FitRun(done.returncode, time.perf_counter() - began, done.stdout)


def failure_reason(run: FitRun) -> str:
    lines = [line.strip() for line in run.output.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line or line.startswith(("Error", "error"))]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    if run.returncode < 0:
        return f"killed by signal {-run.returncode}; last output: {last}"
    return f"exit status {run.returncode}: {last}"


# Wall seconds per hour of training audio per training pass of the default fits (models/README.md,
# "Training speed"), for the run's first estimate only.
_SECONDS_PER_AUDIO_HOUR = {"cae": 64.0, "dense": 45.0}
_DEFAULT_EPOCHS = {"cae": 8, "dense": 20}
_FIT_OVERHEAD_S = 20.0  # TensorFlow start-up, tracing, export, calibration


def _option(args: Sequence[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def assumed_fit_seconds(config: Config, detector: str) -> float:
    """A guess from the fit's arguments; the run replaces it with measured fit times as they come."""
    args = [*config.fit_args, *config.detectors[detector]]
    arch = _option(args, "--arch") or "cae"
    hours = len(config.ids) * config.n_train * config.duration / 3600
    try:
        epochs = int(_option(args, "--epochs") or _DEFAULT_EPOCHS.get(arch, 8))
        folds = int(_option(args, "--folds") or 5)
    except ValueError:
        epochs, folds = _DEFAULT_EPOCHS.get(arch, 8), 5
    from training.fit_options import CROSS_FIT_BELOW

    calibration = _option(args, "--calibration") or "auto"
    cross = calibration == "cross-fit" or (calibration == "auto" and config.n_train < CROSS_FIT_BELOW)
    # A cross-fit trains k fold models on (k-1)/k of the clips, then one on all: about k passes.
    passes = folds if cross else 1
    rate = _SECONDS_PER_AUDIO_HOUR.get(arch, _SECONDS_PER_AUDIO_HOUR["cae"])
    return _FIT_OVERHEAD_S + rate * hours * passes * epochs / _DEFAULT_EPOCHS.get(arch, 8)

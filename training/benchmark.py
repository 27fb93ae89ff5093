"""`asd-train benchmark`: how well each detector configuration detects, over families, seeds and SNRs.

For every machine family x synthesiser seed x SNR variant the benchmark makes
a data set with `training.synth.generate_dataset`; for every detector
configuration and fit seed it fits a detector on it (`asd-train fit` with the
configuration's extra arguments) and evaluates it with
`training.report.evaluate_model` (per-ID AUC and pAUC with ``max_fpr=0.1``,
AUC per fault kind). `training.benchmark_report` turns the results into
QUALITY.md and QUALITY.json.

Work folder (``--work``), re-used by later runs so an interrupted one resumes::

    data/<size>/<family>_seed<S>_snr<V>/         the data set; benchmark-data.json when complete
    fits/<size>/<data set>/<detector>_fit<S>/     the detector folder
    fits/<size>/<data set>/<detector>_fit<S>.log  the fit's output; .fit.json its command, time, data
    fits/<size>/<data set>/<detector>_fit<S>.eval.json   its evaluation, keyed on threshold.json

A data set is re-used when its marker names the same request, every clip is
there, and a small sample the synthesiser makes now hashes as it did when the
data set was made (`sample_digest`). A detector folder is
re-used when its threshold.json records the command this run would execute and
its .fit.json says it was fitted on the data set as it is now; otherwise it is
removed and fitted again.

Fits run as ``python -m training.cli fit`` subprocesses, not through `run_fit`:
a configuration *is* a list of `fit` arguments, so every option `fit` has or
gains works here without this module mapping arguments to `FitOptions` (and
without importing `training.cli`); a crash, a kill for memory or TensorFlow's
global state ends one cell, not the benchmark; and each fit is exactly the
command a user would run, recorded in its threshold.json. TensorFlow's start-up
(about 10 s) per fit is small beside the minutes a fit of the full grid takes.

A cell that cannot be made (family the synthesiser rejects, unreadable or too
few clips, a failing fit or evaluation) is recorded as failed with its reason,
announced on stderr, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TextIO

from training.dataset import DatasetError, parse_ids

# Name -> extra `asd-train fit` arguments. New scorers join by adding an entry.
DETECTORS: dict[str, tuple[str, ...]] = {
    "cae": (),
    "dense": ("--arch", "dense"),
}
BASELINE = "dense"
DEFAULT_SNR = "default"


@dataclass(frozen=True)
class GridDefaults:
    families: tuple[str, ...]
    seeds: tuple[int, ...]
    snrs: tuple[str, ...]
    detectors: tuple[str, ...]
    ids: tuple[str, ...]
    n_train: int
    n_test_normal: int
    n_test_anomaly: int
    duration: float
    fit_args: tuple[str, ...]


# The README's data set size, every family, two seeds, the family's own SNR and a noisier range.
FULL = GridDefaults(
    families=("slider", "fan", "pump", "valve"),
    seeds=(0, 1),
    snrs=(DEFAULT_SNR, "-6:0"),
    detectors=("cae", "dense"),
    ids=("00", "02", "04", "06"),
    n_train=300,
    n_test_normal=100,
    n_test_anomaly=100,
    duration=10.0,
    fit_args=(),
)
# A smoke check of every family and detector in minutes: numbers only show that the path works. A
# holdout (as the full grid's 300 clips per ID get) instead of the cross-fit 20 clips would pick: one
# training instead of six.
QUICK = GridDefaults(
    families=FULL.families,
    seeds=(0,),
    snrs=(DEFAULT_SNR,),
    detectors=FULL.detectors,
    ids=("00", "02"),
    n_train=20,
    n_test_normal=10,
    n_test_anomaly=10,
    duration=10.0,
    fit_args=("--epochs", "2", "--calibration", "holdout", "--val-fraction", "0.25"),
)

# Options the benchmark sets for every cell; a configuration that set them would break the grid.
RESERVED_FIT_OPTIONS = ("--out", "--machine-type", "--ids", "--seed")
DATA_MARKER = "benchmark-data.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_FAMILY = re.compile(r"[a-z0-9][a-z0-9_-]*")


class BenchmarkConfigError(ValueError):
    """A malformed benchmark option; the message says which and why."""


@dataclass(frozen=True)
class Snr:
    """An SNR variant: the family's default (value None), a level in dB, or a (low, high) range per clip."""

    text: str  # as written in folder names and tables: "default", "6", "-6:0"
    value: float | tuple[float, float] | None


def parse_snr(text: str) -> Snr:
    raw = text.strip()
    if raw.lower() == DEFAULT_SNR:
        return Snr(DEFAULT_SNR, None)
    try:
        if ":" in raw:
            low_text, high_text = raw.split(":")
            low, high = float(low_text), float(high_text)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError
            return Snr(f"{low:g}:{high:g}", (low, high))
        level = float(raw)
        if not math.isfinite(level):
            raise ValueError
        return Snr(f"{level:g}", level)
    except ValueError:
        raise BenchmarkConfigError(
            f"SNR variant {text!r} is not 'default', a level in dB (6) or a range LOW:HIGH (-6:0)"
        ) from None


def _split(text: str, what: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise BenchmarkConfigError(f"{what} takes a comma-separated list, got {text!r}")
    if len(set(parts)) != len(parts):
        raise BenchmarkConfigError(f"{what} names an entry twice: {text!r}")
    return parts


def parse_families(text: str) -> tuple[str, ...]:
    families = _split(text, "--families")
    for family in families:
        if not _FAMILY.fullmatch(family):
            raise BenchmarkConfigError(f"--families: {family!r} is not a machine type name such as slider")
    return tuple(families)


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    seeds = []
    for part in _split(text, option):
        if not part.isdigit():
            raise BenchmarkConfigError(f"{option} takes non-negative integers, got {part!r}")
        seeds.append(int(part))
    return tuple(seeds)


def parse_snrs(text: str) -> tuple[Snr, ...]:
    # Checked after parsing: "-6:0" and "-6:0.0" are the same variant.
    snrs = tuple(parse_snr(part) for part in _split(text, "--snr"))
    if len({s.text for s in snrs}) != len(snrs):
        raise BenchmarkConfigError(f"--snr names a variant twice: {text!r}")
    return snrs


def parse_detector_definition(text: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=ARGS`` (ARGS shell-split) -> (name, args)."""
    name, sep, args = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name):
        raise BenchmarkConfigError(
            f"--detector takes NAME=ARGS, e.g. 'dense-short=--arch dense --epochs 5', got {text!r}"
        )
    return name, _fit_args(args, f"--detector {name}")


def _fit_args(text: str, where: str) -> tuple[str, ...]:
    try:
        args = tuple(shlex.split(text))
    except ValueError as error:
        raise BenchmarkConfigError(f"{where}: cannot split {text!r}: {error}") from None
    for arg in args:
        option = arg.split("=", 1)[0]
        # argparse accepts unambiguous prefixes ("--mach"), so a prefix is as much a clash as the name.
        if len(option) > 2 and any(reserved.startswith(option) for reserved in RESERVED_FIT_OPTIONS):
            raise BenchmarkConfigError(
                f"{where}: {arg!r} is set by the benchmark for every cell ({', '.join(RESERVED_FIT_OPTIONS)})"
            )
    return args


@dataclass(frozen=True)
class DataSpec:
    family: str
    seed: int
    snr: Snr

    @property
    def name(self) -> str:
        return f"{self.family}_seed{self.seed}_snr{self.snr.text}"


@dataclass(frozen=True)
class Config:
    families: tuple[str, ...]
    seeds: tuple[int, ...]
    snrs: tuple[Snr, ...]
    detectors: dict[str, tuple[str, ...]]  # the chosen ones, in order: name -> fit arguments
    ids: tuple[str, ...]
    n_train: int
    n_test_normal: int
    n_test_anomaly: int
    duration: float
    fit_args: tuple[str, ...]  # before every configuration's own arguments (which win)
    fit_seeds: tuple[int, ...] | None = None  # None: each data set's own seed
    quick: bool = False

    def datasets(self) -> list[DataSpec]:
        return [DataSpec(f, s, v) for f in self.families for s in self.seeds for v in self.snrs]

    def fit_seeds_for(self, spec: DataSpec) -> tuple[int, ...]:
        return self.fit_seeds if self.fit_seeds is not None else (spec.seed,)

    @property
    def size_tag(self) -> str:
        return (
            f"ids{'-'.join(self.ids)}_train{self.n_train}_test{self.n_test_normal}+{self.n_test_anomaly}"
            f"_{self.duration:g}s"
        )

    def describe(self) -> dict:
        return {
            "families": list(self.families),
            "seeds": list(self.seeds),
            "snr": [s.text for s in self.snrs],
            "detectors": {name: list(args) for name, args in self.detectors.items()},
            "ids": list(self.ids),
            "n_train": self.n_train,
            "n_test_normal": self.n_test_normal,
            "n_test_anomaly": self.n_test_anomaly,
            "duration": self.duration,
            "fit_args": list(self.fit_args),
            "fit_seeds": None if self.fit_seeds is None else list(self.fit_seeds),
            "quick": self.quick,
        }


def build_config(
    *,
    quick: bool = False,
    families: str | None = None,
    seeds: str | None = None,
    snr: str | None = None,
    detectors: str | None = None,
    definitions: Sequence[str] = (),
    fit_seeds: str | None = None,
    fit_args: str | None = None,
    ids: str | None = None,
    n_train: int | str | None = None,
    n_test_normal: int | str | None = None,
    n_test_anomaly: int | str | None = None,
    duration: float | str | None = None,
) -> Config:
    """The grid from option texts or numbers (None: the full or quick default).

    Raises BenchmarkConfigError with a one-line message for anything malformed.
    """
    base = QUICK if quick else FULL
    known = dict(DETECTORS)
    added = []
    for text in definitions:
        name, args = parse_detector_definition(text)
        known[name] = args  # a definition may also replace a built-in one's arguments
        added.append(name)
    if detectors is not None:
        chosen = _split(detectors, "--detectors")
        unknown = [name for name in chosen if name not in known]
        if unknown:
            raise BenchmarkConfigError(
                f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(known)} "
                "(define one with --detector NAME=ARGS)"
            )
    else:
        chosen = list(dict.fromkeys([*base.detectors, *added]))
    try:
        id_list = parse_ids(ids) if ids is not None else base.ids
    except DatasetError as error:
        raise BenchmarkConfigError(f"--ids: {error}") from None
    if not id_list:
        raise BenchmarkConfigError("--ids must name at least one machine ID")
    counts = {}
    for option, value, default in (
        ("--train", n_train, base.n_train),
        ("--test-normal", n_test_normal, base.n_test_normal),
        ("--test-anomaly", n_test_anomaly, base.n_test_anomaly),
    ):
        text = str(default if value is None else value).strip()
        if not text.isdigit():
            raise BenchmarkConfigError(f"{option} takes a number of clips >= 0, got {text!r}")
        counts[option] = int(text)
    try:
        seconds = float(base.duration if duration is None else duration)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise BenchmarkConfigError(f"--duration must be a positive number of seconds, got {duration!r}")
    return Config(
        families=parse_families(families) if families is not None else base.families,
        seeds=parse_seeds(seeds) if seeds is not None else base.seeds,
        snrs=parse_snrs(snr) if snr is not None else tuple(parse_snr(s) for s in base.snrs),
        detectors={name: known[name] for name in chosen},
        ids=tuple(id_list),
        n_train=counts["--train"],
        n_test_normal=counts["--test-normal"],
        n_test_anomaly=counts["--test-anomaly"],
        duration=float(seconds),
        fit_args=_fit_args(fit_args, "--fit-args") if fit_args is not None else base.fit_args,
        fit_seeds=parse_seeds(fit_seeds, "--fit-seeds") if fit_seeds is not None else None,
        quick=quick,
    )


@dataclass
class CellResult:
    """One (data set, detector, fit seed): its per-ID numbers, or why there are none."""

    family: str
    seed: int
    snr: str
    detector: str
    fit_seed: int
    status: str = "ok"  # or "failed"
    stage: str | None = None  # where it failed: "data", "fit" or "evaluate"
    reason: str | None = None
    ids: dict[str, dict[str, float]] = field(default_factory=dict)  # ID -> {"auc", "pauc"}
    kinds: dict[str, dict[str, float]] = field(default_factory=dict)  # ID -> {kind: AUC}
    fit_seconds: float | None = None
    evaluate_seconds: float | None = None
    fit_reused: bool = False
    data_reused: bool = False
    command: str | None = None
    skipped_train_files: list[str] = field(default_factory=list)
    model_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, stage: str, reason: str) -> CellResult:
        self.status, self.stage, self.reason = "failed", stage, " ".join(reason.split())
        self.ids, self.kinds = {}, {}
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> CellResult:
        return cls(**data)


@dataclass(frozen=True)
class FitRun:
    returncode: int
    seconds: float
    output: str  # stdout and stderr of the fit


# -- data sets ---------------------------------------------------------------------------------------------


def data_request(config: Config, spec: DataSpec) -> dict:
    """The arguments a data set is made from."""
    return {
        "family": spec.family,
        "seed": spec.seed,
        "snr": spec.snr.text,
        "ids": list(config.ids),
        "n_train": config.n_train,
        "n_test_normal": config.n_test_normal,
        "n_test_anomaly": config.n_test_anomaly,
        "duration": config.duration,
    }


def _synth_kwargs(config: Config, spec: DataSpec) -> dict:
    kwargs = {} if spec.snr.value is None else {"snr_db": spec.snr.value}
    return {"machine_type": spec.family, "seed": spec.seed, **kwargs}


def synthesise(root: Path, config: Config, spec: DataSpec) -> None:
    """Write one data set; the synthesiser's ValueError passes through (an argument it rejects)."""
    from training.synth import generate_dataset

    generate_dataset(
        root,
        ids=config.ids,
        n_train=config.n_train,
        n_test_normal=config.n_test_normal,
        n_test_anomaly=config.n_test_anomaly,
        duration=config.duration,
        **_synth_kwargs(config, spec),
    )


def sample_digest(config: Config, spec: DataSpec) -> str:
    """sha256 of a small sample the synthesiser makes now for this data set's arguments.

    Stored with the data set: when the synthesiser changes what it makes, the sample changes, and the
    data set (and every fit on it) is made again; an edit that changes no output costs nothing. The
    sample: short clips of the first ID, one of each split and up to 8 faults (every kind of a family
    with up to 8), and anomaly_kinds.csv.
    """
    import tempfile

    from training.synth import generate_dataset

    with tempfile.TemporaryDirectory(prefix="asd-benchmark-sample-") as folder:
        generate_dataset(
            folder,
            ids=config.ids[:1],
            n_train=1,
            n_test_normal=1,
            n_test_anomaly=min(config.n_test_anomaly, 8),
            duration=min(config.duration, 2.0),
            **_synth_kwargs(config, spec),
        )
        digest = hashlib.sha256()
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def read_marker(root: Path) -> dict | None:
    """A complete data set's marker: {"request": data_request(...), "sample_sha256": ...}."""
    return _read_json(root / DATA_MARKER)


def _has_clips(root: Path, request: Mapping) -> bool:
    per_id = len(request["ids"])
    train = root / request["family"] / "train"
    test = root / request["family"] / "test"
    n_test = (request["n_test_normal"] + request["n_test_anomaly"]) * per_id
    return (
        len(list(train.glob("*.wav"))) == request["n_train"] * per_id
        and len(list(test.glob("*.wav"))) == n_test
    )


def data_present(root: Path, config: Config, spec: DataSpec) -> bool:
    """Cheap check (no synthesis): the marker names this request and every clip is there."""
    marker = read_marker(root)
    request = data_request(config, spec)
    return marker is not None and marker.get("request") == request and _has_clips(root, request)


def _rejected(spec: DataSpec, error: Exception) -> str:
    if isinstance(error, ValueError):
        if "machine_type" in str(error) or "machine type" in str(error):
            return f"family missing: the synthesiser rejects {spec.family!r} ({error})"
        return f"the synthesiser rejects this data set: {error}"
    return f"synthesis failed: {type(error).__name__}: {error}"


def prepare_data(root: Path, config: Config, spec: DataSpec) -> tuple[bool, str | None]:
    """Make (or re-use) the data set at `root`. Returns (re-used, failure reason or None)."""
    try:
        digest = sample_digest(config, spec)
        if data_present(root, config, spec) and (read_marker(root) or {}).get("sample_sha256") == digest:
            return True, None
        if root.exists():
            shutil.rmtree(root)  # interrupted, different or made by another synthesiser: never mix clips
        synthesise(root, config, spec)
    except Exception as error:
        shutil.rmtree(root, ignore_errors=True)
        return False, _rejected(spec, error)
    request = data_request(config, spec)
    if not _has_clips(root, request):
        return False, "the synthesiser wrote fewer clips than asked for"
    marker = {"request": request, "sample_sha256": digest}
    (root / DATA_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return False, None


# -- fits --------------------------------------------------------------------------------------------------


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
        return data["training"]["command"]
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


def _failure_reason(run: FitRun) -> str:
    lines = [line.strip() for line in run.output.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line or line.startswith(("Error", "error"))]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    if run.returncode < 0:
        return f"killed by signal {-run.returncode}; last output: {last}"
    return f"exit status {run.returncode}: {last}"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- evaluation --------------------------------------------------------------------------------------------


def evaluate_cell(model_dir: Path, data_root: Path, ids: Sequence[str]) -> dict:
    """`evaluate_model`'s report of one detector on one data set (nothing written)."""
    from training.report import evaluate_model

    return evaluate_model(model_dir, data_root, ids=ids, progress=False)


def _numbers(report: Mapping) -> tuple[dict, dict]:
    ids = {mid: {"auc": float(m["auc"]), "pauc": float(m["pauc"])} for mid, m in report["ids"].items()}
    kinds = {
        mid: {kind: float(v["auc"]) for kind, v in per.items()}
        for mid, per in report.get("kinds", {}).get("ids", {}).items()
    }
    return ids, kinds


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the run -----------------------------------------------------------------------------------------------

# Wall seconds per hour of training audio per training pass, from models/README.md ("Training speed":
# the default CAE fit took 3 min 32 s and the dense one 2 min 30 s on 3.3 h, on this 2-core machine).
_SECONDS_PER_AUDIO_HOUR = {"cae": 64.0, "dense": 45.0}
_DEFAULT_EPOCHS = {"cae": 8, "dense": 20}
_FIT_OVERHEAD_S = 20.0  # TensorFlow start-up, tracing, export, calibration
# Synthesis: 50-70 ms per 10-s clip of the slider and fan here, about 1.7 times that for pump and valve.
_SYNTH_S_PER_AUDIO_S = 0.007
_SCORE_S_PER_AUDIO_S = 0.004


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
    from training.train import CROSS_FIT_BELOW

    calibration = _option(args, "--calibration") or "auto"
    cross = calibration == "cross-fit" or (calibration == "auto" and config.n_train < CROSS_FIT_BELOW)
    # A cross-fit trains k fold models on (k-1)/k of the clips, then one on all: about k passes.
    passes = folds if cross else 1
    rate = _SECONDS_PER_AUDIO_HOUR.get(arch, _SECONDS_PER_AUDIO_HOUR["cae"])
    return _FIT_OVERHEAD_S + rate * hours * passes * epochs / _DEFAULT_EPOCHS.get(arch, 8)


def format_seconds(seconds: float) -> str:
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class Outcome:
    cells: list[CellResult]
    seconds: float
    started: str

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in self.cells if not c.ok]


class Benchmark:
    """Runs a `Config` in a work folder; `run` returns every cell, failed ones included."""

    def __init__(
        self, config: Config, work: Path, *, stream: TextIO | None = None, errors: TextIO | None = None
    ) -> None:
        self.config = config
        self.work = Path(work).resolve()
        self.stream = sys.stdout if stream is None else stream
        self.errors = sys.stderr if errors is None else errors

    def data_dir(self, spec: DataSpec) -> Path:
        return self.work / "data" / self.config.size_tag / spec.name

    def fit_dir(self, spec: DataSpec, detector: str, fit_seed: int) -> Path:
        return self.work / "fits" / self.config.size_tag / spec.name / f"{detector}_fit{fit_seed}"

    def _arguments(self, spec: DataSpec, detector: str, fit_seed: int) -> list[str]:
        # Relative to the work folder (the fit's cwd): the recorded command survives moving the folder.
        data = self.data_dir(spec).relative_to(self.work).as_posix()
        out = self.fit_dir(spec, detector, fit_seed).relative_to(self.work).as_posix()
        return fit_arguments(self.config, spec, detector, fit_seed, data=data, out=out)

    def reusable(self, spec: DataSpec, detector: str, fit_seed: int) -> bool:
        """A complete detector folder fitted by this cell's command on this very data set."""
        model_dir = self.fit_dir(spec, detector, fit_seed)
        command = shlex.join(["asd-train", *self._arguments(spec, detector, fit_seed)])
        sidecar = _read_json(model_dir.with_name(model_dir.name + ".fit.json")) or {}
        return (
            recorded_command(model_dir) == command
            and sidecar.get("command") == command
            and sidecar.get("data") == read_marker(self.data_dir(spec))
        )

    def _cells(self) -> list[tuple[DataSpec, str, int]]:
        return [
            (spec, detector, fit_seed)
            for spec in self.config.datasets()
            for detector in self.config.detectors
            for fit_seed in self.config.fit_seeds_for(spec)
        ]

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _warn(self, text: str) -> None:
        print(f"asd-train benchmark: {text}", file=self.errors, flush=True)

    def estimate(self) -> tuple[float, int, int]:
        """(assumed seconds, fits to run, fits re-used) for what is not in the work folder yet."""
        todo = reused = 0
        seconds = 0.0
        clips = len(self.config.ids) * (
            self.config.n_train + self.config.n_test_normal + self.config.n_test_anomaly
        )
        for spec in self.config.datasets():
            if not data_present(self.data_dir(spec), self.config, spec):
                seconds += clips * self.config.duration * _SYNTH_S_PER_AUDIO_S
        for spec, detector, fit_seed in self._cells():
            if self.reusable(spec, detector, fit_seed):
                reused += 1
            else:
                todo += 1
                seconds += assumed_fit_seconds(self.config, detector)
            test_audio = (self.config.n_test_normal + self.config.n_test_anomaly) * self.config.duration
            seconds += len(self.config.ids) * test_audio * _SCORE_S_PER_AUDIO_S
        return seconds, todo, reused

    def run(self) -> Outcome:
        from datetime import datetime

        started = datetime.now(UTC).isoformat(timespec="seconds")
        began = time.perf_counter()
        cells = self._cells()
        assumed, todo, reused = self.estimate()
        self._say(
            f"benchmark: {len(self.config.datasets())} data set(s), {len(cells)} fit(s): "
            f"{todo} to run, {reused} re-used from {self.work}"
        )
        self._say(
            f"estimated run time: about {format_seconds(assumed)} (an estimate: assumed fit times from "
            "models/README.md scaled to this grid; measured fit times replace them as fits finish)"
        )
        results: list[CellResult] = []
        measured: dict[str, list[float]] = {}
        for spec in self.config.datasets():
            root = self.data_dir(spec)
            data_reused, problem = prepare_data(root, self.config, spec)
            label = f"{spec.family} seed {spec.seed} SNR {spec.snr.text}"
            if problem is None:
                self._say(f"data {label}: {'re-used' if data_reused else 'written'} ({root})")
            for detector in self.config.detectors:
                for fit_seed in self.config.fit_seeds_for(spec):
                    cell = CellResult(
                        spec.family, spec.seed, spec.snr.text, detector, fit_seed, data_reused=data_reused
                    )
                    if problem is not None:
                        cell.fail("data", problem)
                    else:
                        self._fit_and_evaluate(cell, spec, root)
                        if not cell.fit_reused and cell.stage != "fit" and cell.fit_seconds is not None:
                            measured.setdefault(detector, []).append(cell.fit_seconds)
                    results.append(cell)
                    where = f"{label}, {detector} fit seed {fit_seed}"
                    if cell.ok:
                        mean_auc = sum(v["auc"] for v in cell.ids.values()) / len(cell.ids)
                        mean_pauc = sum(v["pauc"] for v in cell.ids.values()) / len(cell.ids)
                        fit = (
                            "re-used"
                            if cell.fit_reused
                            else f"fitted in {format_seconds(cell.fit_seconds or 0)}"
                        )
                        self._say(f"{where}: AUC {mean_auc:.4f}, pAUC {mean_pauc:.4f} ({fit})")
                    else:
                        self._warn(f"FAILED {where} ({cell.stage}): {cell.reason}")
                    left = self._left(measured, results, cells) if measured and not cell.fit_reused else 0.0
                    if left > 0 and cell.stage not in ("data",):
                        self._say(
                            f"  about {format_seconds(left)} of fits left (estimate from the fits "
                            "measured so far)"
                        )
        seconds = time.perf_counter() - began
        self._say(
            f"benchmark finished in {format_seconds(seconds)} (measured): {len(results)} cell(s), "
            f"{sum(not c.ok for c in results)} FAILED"
        )
        return Outcome(results, seconds, started)

    def _left(
        self,
        measured: Mapping[str, list[float]],
        done: Sequence[CellResult],
        cells: Sequence[tuple[DataSpec, str, int]],
    ) -> float:
        every = [s for values in measured.values() for s in values]
        left = 0.0
        for spec, detector, fit_seed in cells[len(done) :]:
            if not self.reusable(spec, detector, fit_seed):
                values = measured.get(detector) or every
                left += sum(values) / len(values)
        return left

    def _fit_and_evaluate(self, cell: CellResult, spec: DataSpec, data_root: Path) -> None:
        model_dir = self.fit_dir(spec, cell.detector, cell.fit_seed)
        arguments = self._arguments(spec, cell.detector, cell.fit_seed)
        command = shlex.join(["asd-train", *arguments])
        cell.command, cell.model_dir = command, str(model_dir)
        timing = model_dir.with_name(model_dir.name + ".fit.json")
        log = model_dir.with_name(model_dir.name + ".log")
        if self.reusable(spec, cell.detector, cell.fit_seed):
            cell.fit_reused = True
            cell.fit_seconds = (_read_json(timing) or {}).get("seconds")
        else:
            if model_dir.exists():
                shutil.rmtree(model_dir)  # another command's, another data set's or an interrupted fit's
            model_dir.parent.mkdir(parents=True, exist_ok=True)
            self._say(f"fitting {cell.detector} (fit seed {cell.fit_seed}) on {spec.name}; log {log}")
            run = run_fit_command(arguments, cwd=self.work)
            log.write_text(f"$ {command}\n{run.output}", encoding="utf-8")
            cell.fit_seconds = round(run.seconds, 1)
            if run.returncode != 0 or recorded_command(model_dir) != command:
                reason = (
                    _failure_reason(run) if run.returncode != 0 else "fit wrote no complete detector folder"
                )
                cell.fail("fit", f"{reason} (log: {log})")
                return
            timing.write_text(
                json.dumps({"command": command, "seconds": cell.fit_seconds, "data": read_marker(data_root)})
                + "\n",
                encoding="utf-8",
            )
        bundle = _read_json(model_dir / "threshold.json") or {}
        skipped = (bundle.get("training") or {}).get("skipped_names") or []
        if skipped:
            cell.skipped_train_files = list(skipped)
            self._warn(
                f"{spec.name} {cell.detector}: fit skipped {len(skipped)} unreadable or too-short "
                f"training file(s): {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}"
            )
        self._evaluate(cell, model_dir, data_root)

    def _evaluate(self, cell: CellResult, model_dir: Path, data_root: Path) -> None:
        cache = model_dir.with_name(model_dir.name + ".eval.json")
        # A changed model or test clip (a new mtime or size) invalidates the stored evaluation.
        clips = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(data_root.glob("*/test/*"))]
        key = {
            "threshold_sha256": _sha256(model_dir / "threshold.json"),
            "data": _read_json(data_root / DATA_MARKER),
            "ids": list(self.config.ids),
            "clips_sha256": hashlib.sha256(json.dumps(clips).encode()).hexdigest(),
        }
        cached = _read_json(cache)
        if cached is not None and cached.get("key") == key:
            cell.ids, cell.kinds = cached["ids"], cached["kinds"]
            cell.evaluate_seconds = cached.get("seconds")
            return
        from training.report import EvaluationError

        began = time.perf_counter()
        try:
            report = evaluate_cell(model_dir, data_root, self.config.ids)
            ids, kinds = _numbers(report)
        except EvaluationError as error:
            cell.fail("evaluate", str(error))
            return
        except Exception as error:
            cell.fail("evaluate", f"{type(error).__name__}: {error}")
            return
        cell.ids, cell.kinds = ids, kinds
        cell.evaluate_seconds = round(time.perf_counter() - began, 1)
        cache.write_text(
            json.dumps({"key": key, "ids": ids, "kinds": kinds, "seconds": cell.evaluate_seconds}, indent=1)
            + "\n",
            encoding="utf-8",
        )


def run_benchmark(
    config: Config,
    *,
    work: Path,
    out: Path,
    json_out: Path | None = None,
    command: str,
    stream: TextIO | None = None,
    errors: TextIO | None = None,
) -> Outcome:
    """Run the grid and write the markdown `out` and the JSON beside it (`json_out`, default .json)."""
    from training.benchmark_report import machine_info, write_outputs

    machine = machine_info()
    outcome = Benchmark(config, work, stream=stream, errors=errors).run()
    write_outputs(
        outcome,
        config,
        machine=machine,
        command=command,
        out=out,
        json_out=json_out if json_out is not None else out.with_suffix(".json"),
    )
    return outcome

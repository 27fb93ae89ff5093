"""`asd-train benchmark`: how well each detector configuration detects, over families, seeds and SNRs.

For every machine family x synthesiser seed x SNR variant the benchmark makes
a data set (`training.benchmark_data`); for every detector configuration and
fit seed it fits a detector on it (`asd-train fit` with the configuration's
extra arguments, `training.benchmark_fit`) and evaluates it with
`training.report.evaluate_model` (per-ID AUC and pAUC with ``max_fpr=0.1``,
AUC per fault kind); `training.benchmark_run` runs the grid and
`training.benchmark_report` turns the results into QUALITY.md and QUALITY.json.

This module is the grid: the built-in configurations (`DETECTORS`), the full
and quick defaults, the option parsing (`build_config`, `BenchmarkConfigError`
for anything malformed), and what a run yields (`CellResult`, `Outcome`).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from training.dataset import parse_ids
from training.errors import BenchmarkConfigError, DatasetError

# Name -> extra `asd-train fit` arguments. New scorers join by adding an entry.
# `cae` is whatever `fit` does by default (the CAE fused with the envelope scorer); `cae-plain`
# is the CAE's reconstruction error alone, to show what the fusion adds.
DETECTORS: dict[str, tuple[str, ...]] = {
    "cae": (),
    "dense": ("--arch", "dense"),
    "cae-plain": ("--scorer", "cae"),
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
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_FAMILY = re.compile(r"[a-z0-9][a-z0-9_-]*")


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

    def describe(self) -> dict[str, Any]:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellResult:
        return cls(**data)


@dataclass
class Outcome:
    cells: list[CellResult]
    seconds: float
    started: str

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in self.cells if not c.ok]

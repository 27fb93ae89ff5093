"""Running the benchmark grid in a work folder: each cell's data set, fit and evaluation, in order.

Work folder (``--work``), re-used by later runs so an interrupted one resumes::

    data/<size>/<family>_seed<S>_snr<V>/         the data set; benchmark-data.json when complete
    fits/<size>/<data set>/<detector>_fit<S>/     the detector folder
    fits/<size>/<data set>/<detector>_fit<S>.log  the fit's output; .fit.json its command, time, data
    fits/<size>/<data set>/<detector>_fit<S>.eval.json   its evaluation, keyed on threshold.json

A data set is re-used as `training.benchmark_data` says. A detector folder is
re-used when its threshold.json records the command this run would execute and
its .fit.json says it was fitted on the data set as it is now; otherwise it is
removed and fitted again.

A cell that cannot be made (family the synthesiser rejects, unreadable or too
few clips, a failing fit or evaluation) is recorded as failed with its reason,
announced on stderr, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from training.benchmark import CellResult, Config, DataSpec, Outcome
from training.benchmark_data import DATA_MARKER, data_present, prepare_data, read_json, read_marker
from training.benchmark_fit import (
    assumed_fit_seconds,
    failure_reason,
    fit_arguments,
    recorded_command,
    run_fit_command,
)
from training.benchmark_report import format_seconds, write_outputs
from training.errors import EvaluationError

# Synthesis and scoring time per second of audio, for the run's first estimate only.
_SYNTH_S_PER_AUDIO_S = 0.007
_SCORE_S_PER_AUDIO_S = 0.004


def machine_info() -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), core counts and the load when the run starts."""
    model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "load_average_at_start": load,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def evaluate_cell(model_dir: Path, data_root: Path, ids: Sequence[str]) -> dict[str, Any]:
    """`evaluate_model`'s report of one detector on one data set (nothing written)."""
    from training.report import evaluate_model

    return evaluate_model(model_dir, data_root, ids=ids, progress=False)


def _numbers(report: Mapping[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    ids = {mid: {"auc": float(m["auc"]), "pauc": float(m["pauc"])} for mid, m in report["ids"].items()}
    kinds = {
        mid: {kind: float(v["auc"]) for kind, v in per.items()}
        for mid, per in report.get("kinds", {}).get("ids", {}).items()
    }
    return ids, kinds


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
        sidecar = read_json(model_dir.with_name(model_dir.name + ".fit.json")) or {}
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
            cell.fit_seconds = (read_json(timing) or {}).get("seconds")
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
                    failure_reason(run) if run.returncode != 0 else "fit wrote no complete detector folder"
                )
                cell.fail("fit", f"{reason} (log: {log})")
                return
            timing.write_text(
                json.dumps({"command": command, "seconds": cell.fit_seconds, "data": read_marker(data_root)})
                + "\n",
                encoding="utf-8",
            )
        bundle = read_json(model_dir / "threshold.json") or {}
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
            "data": read_json(data_root / DATA_MARKER),
            "ids": list(self.config.ids),
            "clips_sha256": hashlib.sha256(json.dumps(clips).encode()).hexdigest(),
        }
        cached = read_json(cache)
        if cached is not None and cached.get("key") == key:
            cell.ids, cell.kinds = cached["ids"], cached["kinds"]
            cell.evaluate_seconds = cached.get("seconds")
            return
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

"""`python -m bench.run`: the whole benchmark, printed and written to BENCHMARKS.md.

    python -m bench.run                  # what `make bench` runs (a few minutes)
    python -m bench.run --quick          # fewer clips and requests, to try it out
    python -m bench.run --out FILE --json FILE

Steps (each described in its module):

1. machine description and load average (`bench.machine`);
2. clips: synthetic 10 s slider clips (`training.synth`) and the real recordings;
   a detector trained on the synthetic training clips and exported (`bench.detector`),
   and its int8 twin (`training.quantize`) when the shipped model is int8: "ours",
   in process and over HTTP, is the folder of the shipped model's precision;
3. in-process, one clip at a time: ours against the naive librosa + Keras
   pipeline and the peer (librosa + onnxruntime's default session on the fp32
   graph), same weights and clips (`bench.inprocess`);
4. fp32 against int8: the two folders timed side by side (`bench.precision`);
5. a floor: the graph's multiply-adds at this machine's one-thread GEMM
   rates (`bench.floor`);
6. over HTTP: `asd-serve` with 1 and 2 workers, cold start, load at several
   concurrencies, resident memory after at least 1,000 requests (`bench.load`);
7. the report (`bench.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import machine as machine_info
from bench.detector import Clip
from bench.report import render, text_table, with_kept_sections
from bench.results import HttpRow, Results, ServerRow, load_results

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "BENCHMARKS.md"


def write_report(path: Path, report: str) -> None:
    """Write BENCHMARKS.md, keeping the sections other commands measured (`bench.report.KEPT_MARKER`)."""
    previous = path.read_text(encoding="utf-8") if path.is_file() else None
    path.write_text(with_kept_sections(report, previous), encoding="utf-8")


@dataclass
class Config:
    synthetic_normal_per_id: int = 55
    synthetic_anomaly_per_id: int = 45
    train_per_id: int = 24
    ids: tuple[str, ...] = ("00", "02")
    epochs: int = 2
    workers: tuple[int, ...] = (1, 2)
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests: dict[int, int] = field(default_factory=lambda: {1: 150, 8: 400, 32: 400})
    rss_after_requests: int = 1000
    cold_starts: int = 3
    warmup_requests: int = 16
    model_name: str = "slider"
    reference_model: Path = REPO / "models" / "slider"
    # Tests: an exported detector folder and a stand-in for Keras' predict skip the training.
    detector_dir: Path | None = None
    predict: Callable[[np.ndarray], np.ndarray] | None = None
    synthetic_seconds: float = 10.0
    real: bool = True
    training_check: bool = True  # compare with training.evaluate.score_files
    int8: bool = True  # quantize the detector (on the synthetic training clips) and time both
    # Ours' precision, "fp32" or "int8"; None: the reference model's (bench.precision.shipped_precision).
    precision: str | None = None
    quick: bool = False  # --quick: the report says so

    def __post_init__(self) -> None:
        from bench.precision import PRECISIONS

        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision is one of {', '.join(PRECISIONS)} or None, not {self.precision!r}")

    def requests_at(self, concurrency: int) -> int:
        return self.requests.get(concurrency, max(self.requests.values()))


QUICK: dict[str, Any] = {
    "synthetic_normal_per_id": 10,
    "synthetic_anomaly_per_id": 5,
    "train_per_id": 12,
    "epochs": 1,
    "concurrency": (1, 8),
    "requests": {1: 30, 8: 80},
    "rss_after_requests": 200,
    "cold_starts": 1,
}


def _log(message: str) -> None:
    print(message, flush=True)


def run(config: Config, *, workdir: Path, log: Callable[[str], None] = _log) -> Results:
    """Everything but the writing; `workdir` holds the clips, the model and the server logs."""
    from bench import floor, inprocess, load, precision
    from bench.detector import (
        keras_predict,
        make_synthetic_data,
        onnx_default_predict,
        real_clips,
        reference_architecture,
        synthetic_test_clips,
        train_detector,
    )

    started = time.perf_counter()
    wanted = config.precision or precision.shipped_precision(config.reference_model)
    results = Results(
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        machine=machine_info.describe().to_dict(),
        load_at_end=None,
        config={
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "predict"
        },
        commands=[],
        clips={},
        detector={},
        ours=None,
        naive=None,
        checks={},
        http=[],
        servers=[],
    )
    log(
        f"machine: {results.machine['cpu']}, {results.machine['cores']} cores, load {results.machine['load_average']}"
    )

    # 1. clips and detector
    log("clips: rendering synthetic slider clips ...")
    t = time.perf_counter()
    need_training = config.detector_dir is None
    machine_root = make_synthetic_data(
        workdir / "data",
        ids=config.ids,
        # The int8 twin takes its activation ranges, gate and thresholds from the training clips.
        n_train=config.train_per_id if need_training or config.int8 or wanted == "int8" else 0,
        n_test_normal=config.synthetic_normal_per_id,
        n_test_anomaly=config.synthetic_anomaly_per_id,
        seconds=config.synthetic_seconds,
    )
    clips: list[Clip] = synthetic_test_clips(machine_root)
    n_synthetic = len(clips)
    if config.real:
        clips += real_clips()
    results.clips = {
        "synthetic": n_synthetic,
        "real": len(clips) - n_synthetic,
        "total": len(clips),
        "audio_seconds": round(sum(c.seconds for c in clips), 1),
        "render_s": round(time.perf_counter() - t, 1),
        "real_channels": sorted({c.channels for c in clips if c.source == "real"}),
    }
    # The trained (fp32) detector and its int8 twin; ours is one of them (bench.precision.ours_folder).
    model_dir = workdir / "fp32" / config.model_name
    int8_dir = workdir / "int8" / config.model_name
    if need_training:
        architecture = reference_architecture(config.reference_model)
        log(f"detector: training on the synthetic clips (architecture from {architecture.source}) ...")
        trained = train_detector(
            machine_root, model_dir, architecture=architecture, epochs=config.epochs, log=log
        )
        predict = keras_predict(trained.keras_model)
        results.detector = {
            "trained": True,
            "architecture": asdict(architecture),
            "seconds": {k: round(v, 1) for k, v in trained.seconds.items()},
        }
    else:
        assert config.detector_dir is not None and config.predict is not None
        shutil.copytree(config.detector_dir, model_dir)
        predict = config.predict
        results.detector = {"trained": False, "source": str(config.detector_dir)}

    quantized = None
    if config.int8 or wanted == "int8":
        log("int8: quantizing the detector on the synthetic training clips (training.quantize) ...")
        quantized = precision.quantize(model_dir, machine_root, int8_dir)
        if quantized["status"] != "quantized":
            log(f"  int8 {quantized['status']}: {quantized['reason']}")
    ours_dir = precision.ours_folder(wanted, model_dir, quantized)
    models_dir = ours_dir.parent
    ours_precision = precision.shipped_precision(ours_dir)
    results.detector.update(
        folder=str(ours_dir),
        precision=ours_precision,
        precision_wanted=wanted,
        precision_source="the run's configuration"
        if config.precision
        else f"{_relative(str(config.reference_model / 'threshold.json'))} (model.precision)",
    )
    if ours_precision != wanted and quantized is not None:
        results.detector["precision_reason"] = f"int8 {quantized['status']}: {quantized.get('reason')}"
    log(f"ours: the {ours_precision} folder ({wanted} wanted, as {results.detector['precision_source']})")

    from service.config import Settings
    from service.detector import Detector

    settings_1 = Settings(workers=1, models_dir=models_dir)
    detector = Detector(ours_dir, intra_op_threads=settings_1.intra_op_threads)
    fp32 = detector if ours_dir == model_dir else Detector(model_dir, intra_op_threads=1)
    bundle = detector.bundle
    results.detector.update(
        arch=bundle.model.arch,
        frames=bundle.patching.frames,
        hop=bundle.patching.hop,
        patches_per_10s=int(
            detector.layout.starts(detector.params.n_frames(10 * detector.params.sample_rate)).size
        ),
        packed_mel_filters=bundle.features.mel_filters is not None,
        intra_op_threads_in_process=settings_1.intra_op_threads,
        onnx_bytes=(ours_dir / bundle.model.file).stat().st_size,
    )

    # 2. in-process
    log(
        "in-process: ours, the naive pipeline (librosa + Keras predict) and the peer (librosa + "
        f"onnxruntime defaults), clip by clip, on {len(clips)} clips ..."
    )
    recipe = inprocess.NaiveRecipe.from_detector(detector)
    # The same model on one onnxruntime thread (ASD_ORT_THREADS=1), when the default is more.
    single = Detector(ours_dir, intra_op_threads=1) if settings_1.intra_op_threads > 1 else None
    # The peer is defined on the fp32 graph, whatever ours runs; so is the floor's count.
    fp32_graph = model_dir / fp32.bundle.model.file
    peer_predict = onnx_default_predict(fp32_graph, input_name=fp32.bundle.model.input_name)
    measured = inprocess.measure_all(
        detector,
        recipe,
        predict,
        clips,
        model_name=config.model_name,
        other_detector=single,
        peer_predict=peer_predict,
    )
    ours = measured.ours
    results.ours, results.naive = ours.to_dict(), measured.naive.to_dict()
    results.peer = measured.peer.to_dict() if measured.peer else None
    results.ours_one_thread = measured.other.to_dict() if measured.other else None
    for pipeline in (ours, measured.naive, measured.peer):
        if pipeline is not None:
            log(
                f"  {pipeline.name}: total median {pipeline.median('total'):.2f} ms, "
                f"{pipeline.clips_per_second:.1f} clips/s"
            )
    # The librosa pipelines run the fp32 weights: with an int8 ours, they are held against ours' path
    # on the fp32 folder (untimed), and int8 against fp32 is the precision row's difference.
    fp32_cae = None if fp32 is detector else [inprocess.cae_component(fp32.score_file(c.data)) for c in clips]
    results.checks.update(
        inprocess.agreement(measured, inprocess.reference_scores(detector, clips), librosa_reference=fp32_cae)
    )
    paths = [c.path for c in clips if c.path is not None]
    if config.training_check and len(paths) == len(clips):
        try:
            from training.evaluate import score_files
        except ImportError:
            pass
        else:
            expected = score_files(ours_dir, paths)
            results.checks["ours_vs_training_score_files_max_rel_diff"] = inprocess.relative_difference(
                ours.scores, expected
            )
    del detector, single, peer_predict, fp32

    if config.int8:
        log("int8: fp32 against its int8 twin ...")
        results.int8 = precision.measure(
            model_dir,
            machine_root,
            int8_dir,
            clips,
            intra_op_threads=settings_1.intra_op_threads,
            quantized=quantized,
        )
        log("  " + precision.summary(results.int8))
    log("floor: multiply-adds of the graph and this machine's one-thread GEMM rates ...")
    # Each precision's measured inference: ours' for its own, the fp32-against-int8 row's for the other.
    inference = {p: results.int8.get(p, {}).get("inference") for p in precision.PRECISIONS}
    inference[ours_precision] = results.ours["stages"]["inference"]
    results.floor = floor.measure(
        fp32_graph,
        batch=results.detector["patches_per_10s"],
        inference=inference,
    )
    log("  " + floor.summary(results.floor))

    # 3. start-up imports, then HTTP
    from bench.startup import import_profile

    results.imports = asdict(import_profile())
    log(
        f"imports of a worker: {results.imports['total_ms']:.0f} ms; heavy packages: {results.imports['heavy'] or 'none'}"
    )
    for workers in config.workers:
        settings = Settings(workers=workers, models_dir=models_dir)
        row = ServerRow(
            workers=workers,
            cold_start_s=[],
            all_ready_s=[],
            phases=[],
            requests_served=0,
            memory=[],
            settings={
                "intra_op_threads": settings.intra_op_threads,
                "scoring_concurrency": settings.scoring_concurrency,
            },
        )
        for attempt in range(config.cold_starts):
            log(
                f"http: starting asd-serve with {workers} worker(s) (start {attempt + 1}/{config.cold_starts}) ..."
            )
            server = load.start_server(models_dir, workers=workers, log_dir=workdir / "logs")
            row.cold_start_s.append(server.cold_start_s)
            row.all_ready_s.append(server.all_ready_s)
            row.phases.append(server.phases())
            row.settings["precision"] = server.model_precision(config.model_name)
            log(f"  ready after {server.cold_start_s:.2f} s (all workers {server.all_ready_s:.2f} s)")
            if attempt < config.cold_starts - 1:
                server.stop()
        with server:
            generator = load.LoadGenerator(server.url, clips, server_pids=server.worker_pids())
            generator.run(concurrency=max(config.concurrency), requests=config.warmup_requests)
            for concurrency in config.concurrency:
                n = config.requests_at(concurrency)
                outcome = generator.run(concurrency=concurrency, requests=n)
                lat = outcome.latencies_ms
                results.http.append(
                    HttpRow(
                        workers=workers,
                        concurrency=concurrency,
                        requests=n,
                        ok=outcome.ok,
                        errors=outcome.errors,
                        error_kinds=outcome.error_kinds,
                        throughput=outcome.throughput,
                        p50=outcome.percentile(50),
                        p95=outcome.percentile(95),
                        p99=outcome.percentile(99),
                        mean_ms=float(np.mean(lat)) if lat else float("nan"),
                        seconds=outcome.elapsed_s,
                        server_cpu_ms=outcome.server_cpu_ms,
                        client_cpu_ms=outcome.client_cpu_ms,
                        worker_cpu_shares=outcome.worker_cpu_shares,
                    )
                )
                log(
                    f"  {workers} worker(s), concurrency {concurrency:>2}: {outcome.throughput:6.1f} clips/s, "
                    f"p50 {outcome.percentile(50):6.1f} ms, p99 {outcome.percentile(99):6.1f} ms, "
                    f"errors {outcome.errors}, CPU per request: server {outcome.server_cpu_ms:.1f} ms, "
                    f"client {outcome.client_cpu_ms:.1f} ms"
                )
            remaining = config.rss_after_requests - generator.sent
            if remaining > 0:
                generator.run(concurrency=max(config.concurrency), requests=remaining)
            row.requests_served = generator.sent
            row.memory = server.memory()
            row.heavy_packages_loaded = server.mapped_packages()
            log(
                f"  resident memory after {generator.sent} requests: "
                + ", ".join(f"{m['VmRSS']:.0f} MB" for m in row.memory)
            )
        results.servers.append(row)
        results.commands.append(
            f"ASD_HOST=127.0.0.1 ASD_PORT=<free port> ASD_WORKERS={workers} "
            f"ASD_MODELS_DIR=<workdir>/{models_dir.name} "
            + " ".join(_relative(part) for part in load.asd_serve_command())
        )

    results.load_at_end = machine_info.load_average()
    results.duration_s = time.perf_counter() - started
    return results


def _relative(part: str) -> str:
    """A path inside the repository as the Makefile would write it (.venv/bin/...)."""
    try:
        return str(Path(part).relative_to(REPO))
    except ValueError:
        return part


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="Markdown report (default BENCHMARKS.md)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer clips and requests (not for the record)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (clips, model, logs)")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only write the report of saved results (--json)",
    )
    args = parser.parse_args(argv)

    if args.render is not None:
        saved = load_results(args.render)
        print(text_table(saved))
        write_report(args.out, render(saved, quick=bool(saved.config.get("quick"))))
        print(f"\nwrote {args.out}")
        return 0

    config = Config(**QUICK) if args.quick else Config()
    config.quick = args.quick
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = Path(tempfile.mkdtemp(prefix="asd-bench-"))
    # Where the results go does not change them: the command shown leaves --out, --json and --keep out.
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a in ("--quick",)]
    command = " ".join([".venv/bin/python -m bench.run", *shown]) + ("" if shown else "   # make bench")
    try:
        results = run(config, workdir=workdir)
    finally:
        if args.keep:
            print(f"working folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.commands.insert(0, command)
    print()
    print(text_table(results))
    write_report(args.out, render(results, quick=args.quick))
    print(f"\nwrote {args.out}")
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's code paths on a tiny scale, so that `make bench` does not rot between runs.

No timing is asserted: the numbers must exist, be finite and positive, the
tables must have their shape, and our scores must be `Detector.score_file`'s. Training is skipped: a constant-factor
ONNX "autoencoder" stands in for the trained detector and `x * factor` for
Keras' `predict`, so the naive librosa path still runs; the peer runs that
graph in onnxruntime's default session, and its int8 twin is quantized on
ten synthetic training clips. Ours is that twin, as `models/slider` ships
int8; a second, smaller run (no HTTP) sets ours to fp32.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.precision import shipped_precision
from bench.report import render, targets, text_table
from bench.run import Config, run
from tests.bench.test_report_rows import assert_tables_rectangular
from tests.training.tiny_detector import make_detector

FACTOR = 0.5
REPO = Path(__file__).resolve().parents[2]


def _finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def _config(root: Path, **changes) -> Config:
    tiny = make_detector(root / "tiny" / "slider", factor=FACTOR, threshold=1.0, machine_ids=("00",))
    settings = {
        "ids": ("00",),
        "synthetic_normal_per_id": 3,
        "synthetic_anomaly_per_id": 2,
        "synthetic_seconds": 3.0,
        "train_per_id": 10,  # the fewest the int8 twin's thresholds are refitted on
        "real": False,
        "workers": (1,),
        "concurrency": (2,),
        "requests": {2: 8},
        "rss_after_requests": 12,
        "cold_starts": 1,
        "warmup_requests": 2,
        "detector_dir": tiny,
        "predict": lambda batch: batch * np.float32(FACTOR),
        "training_check": False,
    }
    return Config(**{**settings, **changes})


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench")
    return run(_config(root), workdir=root / "work", log=lambda _: None)


@pytest.fixture(scope="module")
def smoke_fp32(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench-fp32")
    config = _config(root, precision="fp32", int8=False, workers=())
    return run(config, workdir=root / "work", log=lambda _: None)


def test_ours_runs_the_precision_models_slider_ships(smoke):
    assert shipped_precision(REPO / "models" / "slider") == "int8"  # what this test is about
    assert smoke.detector["precision"] == smoke.detector["precision_wanted"] == "int8"
    assert smoke.detector["precision_source"] == "models/slider/threshold.json (model.precision)"
    ours = Path(smoke.detector["folder"])
    assert ours.name == "slider" and shipped_precision(ours) == "int8"
    # The server served that folder: its own GET /v1/models/slider says int8.
    assert [server.settings["precision"] for server in smoke.servers] == ["int8"]
    markdown = render(smoke)
    assert (
        "- ours ran **int8**: the precision models/slider/threshold.json (model.precision) gives;" in markdown
    )
    assert "`asd-serve` serves ours' int8 folder as `slider`" in markdown
    assert "says precision int8" in markdown and "score_upload` on the int8 folder" in markdown


def test_ours_runs_fp32_when_told_and_then_is_the_trained_folder(smoke_fp32):
    assert smoke_fp32.detector["precision"] == "fp32"
    assert smoke_fp32.detector["precision_source"] == "the run's configuration"
    ours = Path(smoke_fp32.detector["folder"])
    assert ours.parent.name == "fp32" and shipped_precision(ours) == "fp32"
    assert not smoke_fp32.int8 and not smoke_fp32.servers
    # Ours runs the librosa pipelines' weights: the checks hold them against ours itself.
    assert smoke_fp32.checks["ours_vs_naive_max_rel_diff"] < 1e-3
    assert smoke_fp32.checks["ours_vs_peer_max_rel_diff"] < 1e-3
    assert "- ours ran **fp32**" in render(smoke_fp32)


def test_in_process_numbers_exist_and_scores_are_the_detectors(smoke):
    assert smoke.clips["total"] == 5
    for pipeline in (smoke.ours, smoke.naive):
        assert pipeline["n_clips"] == 5
        for stage in ("decode", "features", "inference", "total"):
            numbers = pipeline["stages"][stage]
            assert _finite_positive(numbers["median_ms"]) and _finite_positive(numbers["p95_ms"]), (
                stage,
                numbers,
            )
            assert numbers["cpu_median_ms"] >= 0 and math.isfinite(numbers["cpu_median_ms"])
        assert _finite_positive(pipeline["clips_per_second"])
    # Ours is the deployed path: exactly read_audio + Detector.score.
    assert smoke.checks["ours_vs_detector_max_rel_diff"] == 0.0
    assert smoke.checks.get("ours_one_thread_vs_ours_max_rel_diff", 0.0) == 0.0
    # The naive path and the peer compute the same thing with librosa's features, on the fp32
    # weights: held against ours' path on the fp32 folder, as ours is the int8 twin.
    assert smoke.checks["fp32_vs_naive_max_rel_diff"] < 1e-3
    assert smoke.checks["fp32_vs_peer_max_rel_diff"] < 1e-3
    assert "ours_vs_naive_max_rel_diff" not in smoke.checks


def test_peer_int8_and_floor_rows_are_measured(smoke):
    assert smoke.peer["n_clips"] == 5
    for stage in ("decode", "features", "inference", "total"):
        assert _finite_positive(smoke.peer["stages"][stage]["median_ms"]), stage
    row = smoke.int8
    assert row["status"] == "quantized", row.get("reason")
    assert row["n_clips"] == 5 and row["n_normal"] == 10
    for precision in ("fp32", "int8"):
        for stage in ("inference", "score"):
            assert _finite_positive(row[precision][stage]["median_ms"]), (precision, stage)
    # A product by a constant quantizes well: the gate passed, so the scores stay within its 2 %.
    assert 0 <= row["max_rel_score_diff"] < 0.02
    floor = smoke.floor
    # The stand-in graph is one Mul: no products to count, so a zero floor that nothing reaches.
    assert floor["macs"] == 0 and floor["floor_ms"] == {"fp32": 0.0, "int8": 0.0}
    assert {rate["precision"] for rate in floor["rates"]} == {"fp32", "int8"}
    assert all(_finite_positive(rate["gmacs"]) for rate in floor["rates"])
    assert floor["reached"]["fp32"]["cpu"] == 0.0 and set(floor["reached"]) == {"fp32", "int8"}


def test_http_numbers_exist_without_errors(smoke):
    (row,) = smoke.http
    assert (row.workers, row.concurrency, row.requests) == (1, 2, 8)
    assert row.errors == 0 and row.ok == 8, row.error_kinds
    for value in (row.throughput, row.p50, row.p95, row.p99, row.mean_ms):
        assert _finite_positive(float(value))
    (server,) = smoke.servers
    assert server.requests_served >= 12
    assert len(server.cold_start_s) == 1 and _finite_positive(server.cold_start_s[0])
    (worker,) = server.memory
    assert _finite_positive(worker["VmRSS"]) and worker["VmHWM"] >= worker["VmRSS"]


def test_report_tables_have_their_shape(smoke):
    text = text_table(smoke)
    assert "naive/ours" in text and "peer/ours" in text and "clips/s" in text
    assert "int8: inference median" in text and "floor: 0.0 M multiply-adds" in text
    markdown = render(smoke)
    for heading in (
        "## Machine",
        "## Commands",
        "## In-process",
        "## HTTP",
        "## Cold start and memory",
        "## fp32 against int8",
        "## A floor",
        "## Targets",
    ):
        assert heading in markdown
    assert_tables_rectangular(markdown)
    stage_rows = [
        line
        for line in markdown.splitlines()
        if line.startswith(("| decode |", "| features |", "| inference |", "| total |"))
    ]
    assert len(stage_rows) == 4
    for line in stage_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        numbers = [float(c.rstrip(" x")) for c in cells[1:]]
        assert all(math.isfinite(n) and n >= 0 for n in numbers), line
    assert {t.met for t in targets(smoke)} <= {True, False, None}

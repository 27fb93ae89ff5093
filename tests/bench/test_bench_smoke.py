"""The benchmark's code paths on a tiny scale, so that `make bench` does not rot between runs.

No timing is asserted: the numbers must exist, be finite and positive, the
tables must have their shape, and our scores must be `Detector.score_file`'s. Training is skipped: a constant-factor
ONNX "autoencoder" stands in for the trained detector and `x * factor` for
Keras' `predict`, so the naive librosa path still runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.report import render, targets, text_table
from bench.run import Config, run
from tests.training.tiny_detector import make_detector

FACTOR = 0.5


def _finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bench")
    config = Config(
        ids=("00",),
        synthetic_normal_per_id=3,
        synthetic_anomaly_per_id=2,
        synthetic_seconds=3.0,
        real=False,
        workers=(1,),
        concurrency=(2,),
        requests={2: 8},
        rss_after_requests=12,
        cold_starts=1,
        warmup_requests=2,
        detector_dir=make_detector(
            root / "tiny" / "slider", factor=FACTOR, threshold=1.0, machine_ids=("00",)
        ),
        predict=lambda batch: batch * np.float32(FACTOR),
        training_check=False,
    )
    return run(config, workdir=root / "work", log=lambda _: None)


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
    # The naive path computes the same thing with librosa's features.
    assert smoke.checks["ours_vs_naive_max_rel_diff"] < 1e-3


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
    assert "naive/ours" in text and "clips/s" in text
    markdown = render(smoke)
    for heading in (
        "## Machine",
        "## Commands",
        "## In-process",
        "## HTTP",
        "## Cold start and memory",
        "## Targets",
    ):
        assert heading in markdown
    # Every Markdown table row has as many cells as its header.
    table: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            widths = {row.strip().count("|") for row in table}
            assert len(widths) == 1, table
            table = []
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

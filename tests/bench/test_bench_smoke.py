"""The benchmark's code paths on a tiny scale, so that `make bench` does not rot between runs.

No timing is asserted: the numbers must exist, be finite and positive, the
tables must have their shape, and our scores must be the plain
`read_audio` + `Detector.score` scores. Training is skipped: a constant-factor
ONNX "autoencoder" stands in for the trained detector and `x * factor` for
Keras' `predict`, so the naive librosa path still runs.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from bench.report import render, targets, text_table
from bench.run import Config, run
from service.bundle import (
    Bundle,
    Features,
    GammaFit,
    Normalization,
    OnnxModel,
    Patching,
    Threshold,
    Training,
    sha256_of,
)
from service.features import FeatureParams

FACTOR = 0.5
FRAMES, HOP = 32, 16


def tiny_detector(folder: Path) -> Path:
    """model.onnx (input * FACTOR) and threshold.json, in the CAE layout."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True)
    params = FeatureParams()
    shape = ["N", params.n_mels, FRAMES, 1]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["log_mel", "factor"], ["reconstruction"])],
        "tiny",
        [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, shape)],
        initializer=[helper.make_tensor("factor", TensorProto.FLOAT, [], [FACTOR])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    Bundle(
        name=folder.name,
        machine_type="slider",
        machine_ids=["00"],
        features=Features.from_params(params),
        patching=Patching(frames=FRAMES, hop=HOP),
        normalization=Normalization(mean=[-60.0] * params.n_mels, std=[20.0] * params.n_mels),
        model=OnnxModel(
            sha256=sha256_of(folder / "model.onnx"), arch="cae", input_name="log_mel",
            output_name="reconstruction", opset=17,
        ),
        threshold=Threshold(
            value=1.0, quantile=0.9, gamma=GammaFit(shape=2.0, loc=0.0, scale=0.5),
            n_calibration_clips=3, empirical_false_alarm_rate=0.1,
        ),
        training=Training(
            trained_at=datetime(2026, 1, 1, tzinfo=timezone.utc), data_root="none", n_clips=1,
            n_validation_clips=1, hours=0.0, clips_per_id={"00": 1}, skipped_files=0, epochs_run=0, seed=0,
        ),
        versions={},
    ).write(folder)  # fmt: skip
    return folder


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
        detector_dir=tiny_detector(root / "tiny" / "slider"),
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
            assert _finite_positive(numbers["median_ms"]) and _finite_positive(numbers["p95_ms"]), (stage, numbers)
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
    for heading in ("## Machine", "## Commands", "## In-process", "## HTTP", "## Cold start and memory", "## Targets"):
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
    stage_rows = [line for line in markdown.splitlines() if line.startswith(("| decode |", "| features |", "| inference |", "| total |"))]
    assert len(stage_rows) == 4
    for line in stage_rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        numbers = [float(c.rstrip(" x")) for c in cells[1:]]
        assert all(math.isfinite(n) and n >= 0 for n in numbers), line
    assert {t.met for t in targets(smoke)} <= {True, False, None}

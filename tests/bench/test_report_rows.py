"""BENCHMARKS.md's peer, int8 and floor rows, rendered from a results object whose numbers are known."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from bench.report import KEPT_MARKER, render, targets, text_table
from bench.results import Results, load_results
from bench.run import write_report


def _pipeline(name: str, total: float, *, inference: float, cpu_inference: float | None = None) -> dict:
    stages = {
        "decode": {"median_ms": 1.0, "p95_ms": 1.5, "cpu_median_ms": 1.0, "cpu_p95_ms": 1.5},
        "features": {"median_ms": 2.0, "p95_ms": 2.5, "cpu_median_ms": 2.0, "cpu_p95_ms": 2.5},
        "inference": {
            "median_ms": inference,
            "p95_ms": inference * 1.2,
            "cpu_median_ms": cpu_inference or inference,
            "cpu_p95_ms": inference * 1.3,
        },
        "total": {"median_ms": total, "p95_ms": total * 1.2, "cpu_median_ms": total, "cpu_p95_ms": total},
    }
    return {
        "name": name,
        "n_clips": 4,
        "stages": stages,
        "clips_per_second": 1000 / total,
        "real_time_factor": 10_000 / total,
        "warmup_s": 0.5,
    }


def _int8_stage(median: float) -> dict:
    return {"median_ms": median, "p95_ms": median + 1, "cpu_median_ms": median, "cpu_p95_ms": median + 1}


INT8 = {
    "status": "quantized",
    "parity": "int8 graph: 20 clips' scores within 0.40 % of fp32 (mean shift +0.10 %, gate 2 %), rank correlation 0.9990 (gate >= 0.99)",
    "n_normal": 20,
    "seconds": 3.5,
    "intra_op_threads": 2,
    "onnx_bytes": {"fp32": 600 * 1024, "int8": 200 * 1024},
    "n_clips": 4,
    "fp32": {"inference": _int8_stage(8.0), "score": _int8_stage(12.0)},
    "int8": {"inference": _int8_stage(4.0), "score": _int8_stage(8.0)},
    "speedup": {"inference": 2.0, "score": 1.5},
    "speedup_cpu": {"inference": 2.0, "score": 1.5},
    "max_rel_score_diff": 0.0042,
}

FLOOR = {
    "batch": 39,
    "macs": 500_000_000,
    "nodes": [
        {"name": "enc", "op_type": "Conv", "macs": 200_000_000, "gemm": [9984, 576, 32]},
        {"name": "dec", "op_type": "Conv", "macs": 300_000_000, "gemm": [9984, 576, 32]},
    ],
    "gemm_shape": [9984, 576, 32],
    "gemm_from": "Conv dec",
    "rates": [
        {"kernel": "onnxruntime MatMul (float32)", "precision": "fp32", "best_ms": 4.6, "gmacs": 50.0},
        {
            "kernel": "onnxruntime MatMulInteger (uint8 x int8 -> int32)",
            "precision": "int8",
            "best_ms": 0.9,
            "gmacs": 250.0,
        },
        {
            "kernel": "numpy float32 matmul (1 BLAS thread)",
            "precision": "fp32",
            "best_ms": 6.6,
            "gmacs": 30.0,
        },
    ],
    "gmacs": {"fp32": 50.0, "int8": 250.0},
    "floor_ms": {"fp32": 10.0, "int8": 2.0},
    # Ours' inference: 20 ms CPU, 12.5 ms wall; int8's: 4 ms both.
    "reached": {"fp32": {"cpu": 0.5, "wall": 0.8}, "int8": {"cpu": 0.5, "wall": 0.5}},
}


def _results(*, peer_total: float = 25.0) -> Results:
    return Results(
        started_at="2026-12-04T20:00:00+00:00",
        machine={
            "cpu": "Test CPU 9000",
            "cores": 2,
            "usable_cores": 2,
            "cpu_quota": "max",
            "ram_gb": 8.0,
            "os": "Linux",
            "python": "3.11.7",
            "versions": {"numpy": "2.4.6"},
            "load_average": (1.0, 1.0, 1.0),
        },
        load_at_end=(1.0, 1.0, 1.0),
        config={"ids": ["00"], "epochs": 2},
        commands=[".venv/bin/python -m bench.run"],
        clips={"synthetic": 4, "real": 0, "total": 4, "audio_seconds": 40.0},
        detector={
            "arch": "cae",
            "frames": 8,
            "hop": 8,
            "patches_per_10s": 39,
            "intra_op_threads_in_process": 2,
        },
        ours=_pipeline("ours", 10.0, inference=12.5, cpu_inference=20.0),
        naive=_pipeline("naive", 80.0, inference=70.0),
        peer=_pipeline("peer", peer_total, inference=peer_total - 4),
        checks={"ours_vs_detector_max_rel_diff": 0.0, "ours_vs_peer_max_rel_diff": 1.5e-7},
        http=[],
        servers=[],
        duration_s=120.0,
        int8=dict(INT8),
        floor=dict(FLOOR),
    )


def _row(markdown: str, first_cell: str) -> list[str]:
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def assert_tables_rectangular(markdown: str) -> None:
    """Every Markdown table row has as many cells as its header."""
    table: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            assert len({row.strip().count("|") for row in table}) == 1, table
            table = []


def test_the_peer_has_its_columns_and_its_ratio():
    markdown = render(_results())
    assert_tables_rectangular(markdown)
    total = _row(markdown, "total")
    # ours 10 ms, naive 80 ms, peer 25 ms: 8 x and 2.5 x.
    assert total[7] == "8.0 x" and total[8:] == ["25.0", "30.0", "25.0", "2.5 x"]
    assert "onnxruntime with its default `SessionOptions`" in markdown
    assert "ours' CAE score vs the peer (librosa features, onnxruntime defaults): 1.50e-07" in markdown


@pytest.mark.parametrize(("peer_total", "met"), [(25.0, False), (30.0, True), (45.0, True)])
def test_the_peer_target_is_three_times(peer_total, met):
    results = _results(peer_total=peer_total)
    (target,) = [t for t in targets(results) if "the peer" in t.name]
    assert target.name.startswith(">= 3 x faster than the peer")
    assert target.measured == f"{peer_total / 10:.1f} x" and target.met is met
    markdown = render(results)
    row = _row(markdown, target.name)
    assert row[1:] == [target.measured, "met" if met else "**missed**"]
    assert ("- Against the peer: ours 10.0 ms, the peer" in markdown) is not met


def test_the_int8_rows():
    markdown = render(_results())
    assert "## fp32 against int8: the same detector quantized" in markdown
    assert (
        "NORMAL_DIR the 20 synthetic training clips: int8 graph: 20 clips' scores within 0.40 %" in markdown
    )
    assert _row(markdown, "inference, `Detector.reconstruct`")[1:] == [
        "8.00", "9.00", "8.00", "4.00", "5.00", "4.00", "2.00 x", "2.00 x",
    ]  # fmt: skip
    assert _row(markdown, "score, `Detector.score`")[-2:] == ["1.50 x", "1.50 x"]
    assert "int8 against fp32: 4.20e-03" in markdown and "600 KiB (fp32) and 200 KiB (int8)" in markdown


@pytest.mark.parametrize("status", ["refused", "unavailable"])
def test_an_int8_refusal_is_shown_with_its_reason(status):
    results = replace(_results(), int8={"status": status, "reason": "the int8 graph does not score as fp32"})
    markdown = render(results)
    verb = "refused it" if status == "refused" else "could not run"
    assert "Not measured: `training.quantize.quantize_detector`" in markdown
    assert f"it {verb}: the int8 graph does not score as fp32" in markdown
    assert "inference, `Detector.reconstruct`" not in markdown
    assert f"int8: {status}: the int8 graph does not score as fp32" in text_table(results)


def test_the_floor_rows():
    markdown = render(_results())
    assert "**500.0 M** in 2 nodes, the largest Conv `dec` with 300.0 M" in markdown
    assert "one core of this machine's Test CPU 9000" in markdown
    assert _row(markdown, "onnxruntime MatMulInteger (uint8 x int8 -> int32)")[1:] == ["0.900", "250.0"]
    # fp32: floor 10 ms against ours' 20 ms CPU and 12.5 ms wall.
    assert _row(markdown, "fp32") == [
        "fp32",
        "50.0",
        "10.00",
        "ours' inference (table above)",
        "20.00",
        "50 %",
        "12.50",
        "80 %",
    ]
    assert _row(markdown, "int8")[1:3] == ["250.0", "2.00"] and _row(markdown, "int8")[-4:] == [
        "4.00",
        "50 %",
        "4.00",
        "50 %",
    ]
    assert "ours' inference reaches 50 % (CPU) / 80 % (wall) of the fp32 floor" in text_table(_results())


def test_a_floor_that_could_not_be_had_says_why():
    results = replace(_results(), floor={"error": "shape inference left tensor 'x' unknown"})
    assert "Not measured: shape inference left tensor 'x' unknown" in render(results)
    assert "floor: shape inference left tensor 'x' unknown" in text_table(results)


def test_results_without_the_new_rows_render_as_before():
    results = replace(_results(), peer=None, int8={}, floor={})
    markdown = render(results)
    assert_tables_rectangular(markdown)
    assert (
        "peer median" not in markdown
        and "## fp32 against int8" not in markdown
        and "## A floor" not in markdown
    )
    assert not [t for t in targets(results) if "peer" in t.name]
    assert len(_row(markdown, "total")) == 8


def test_saved_results_render_the_same(tmp_path: Path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(asdict(_results()), default=str), encoding="utf-8")
    again = load_results(path)
    assert (
        again.peer == _results().peer and again.int8 == INT8 and again.floor["floor_ms"] == FLOOR["floor_ms"]
    )
    assert render(again) == render(_results())


def test_the_kept_sections_survive_a_report_with_the_new_rows(tmp_path: Path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text(f"# Benchmarks\n\nold\n\n{KEPT_MARKER}\n\n## Operator page\n\nmeasured elsewhere\n")
    write_report(out, render(_results()))
    text = out.read_text(encoding="utf-8")
    assert text.index("## A floor") < text.index(KEPT_MARKER) < text.index("## Operator page")
    assert text.count(KEPT_MARKER) == 1 and text.endswith("measured elsewhere\n")

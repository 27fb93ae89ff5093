"""fp32 against int8 in the benchmark: a refusal or a missing dependency is a row with its reason."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.detector import make_synthetic_data, read_clips
from bench.precision import compare, measure, quantize
from service.detector import Detector
from tests.training.tiny_detector import make_detector


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_data(
        tmp_path_factory.mktemp("precision") / "data",
        ids=("00",),
        n_train=10,
        n_test_normal=2,
        n_test_anomaly=1,
        seconds=2.0,
    )


def _detector(tmp_path: Path) -> Path:
    return make_detector(tmp_path / "fp32" / "slider", factor=0.5, threshold=1.0, machine_ids=("00",))


def test_a_quantized_twin_is_timed_beside_its_original(tmp_path, data):
    clips = read_clips(sorted((data / "test").glob("*.wav")), source="synthetic")
    row = measure(
        _detector(tmp_path), data, tmp_path / "int8" / "slider", clips, intra_op_threads=1, warmup=1
    )
    assert row["status"] == "quantized", row.get("reason")
    assert row["n_clips"] == 3 and row["intra_op_threads"] == 1
    assert "int8 graph: 10 clips" in row["parity"]
    assert Detector(tmp_path / "int8" / "slider").bundle.model.precision == "int8"
    for precision in ("fp32", "int8"):
        assert set(row[precision]) == {"inference", "score"}
        assert row[precision]["score"]["median_ms"] > 0
    assert row["speedup"]["score"] > 0 and 0 <= row["max_rel_score_diff"] < 0.02


def test_compare_of_a_folder_with_itself_scores_alike(tmp_path, data):
    clips = read_clips(sorted((data / "test").glob("*.wav")), source="synthetic")
    folder = _detector(tmp_path)
    row = compare(Detector(folder), Detector(folder), clips, warmup=0)
    assert row["max_rel_score_diff"] == 0.0 and row["n_clips"] == 3
    for precision in ("fp32", "int8"):
        assert all(row[precision][stage]["median_ms"] > 0 for stage in ("inference", "score"))


def test_a_refusal_is_the_row_with_its_reason(tmp_path):
    few = make_synthetic_data(
        tmp_path / "few", ids=("00",), n_train=3, n_test_normal=0, n_test_anomaly=0, seconds=2.0
    )
    out = tmp_path / "int8" / "slider"
    row = measure(_detector(tmp_path), few, out, [], intra_op_threads=1)
    assert row["status"] == "refused"
    assert "3 usable normal clip(s)" in row["reason"]
    assert "fp32" not in row and not out.exists()


def test_a_missing_quantization_dependency_is_a_sentence(tmp_path, data, monkeypatch):
    # As if onnxruntime's quantization tools were not installed: their import fails on first use.
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    row = quantize(_detector(tmp_path), data, tmp_path / "int8" / "slider")
    assert row["status"] == "unavailable"
    assert "install the train extra" in row["reason"] and "onnxruntime.quantization" in row["reason"]


def test_missing_training_code_is_a_sentence(tmp_path, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "training.quantize", None)
    row = quantize(_detector(tmp_path), data, tmp_path / "int8" / "slider")
    assert row["status"] == "unavailable"
    assert row["reason"].startswith("training.quantize cannot be imported")

"""fp32 against int8 in the benchmark: a refusal or a missing dependency is a row with its reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.detector import make_synthetic_data, read_clips
from bench.precision import compare, measure, ours_folder, quantize, shipped_precision
from bench.run import Config
from service.detector import Detector
from tests.training.tiny_detector import make_detector

REPO = Path(__file__).resolve().parents[2]


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


# --- which folder is "ours" ------------------------------------------------------------------


def test_the_precision_a_model_folder_ships(tmp_path, data):
    fp32 = _detector(tmp_path)
    assert shipped_precision(fp32) == "fp32"
    assert quantize(fp32, data, tmp_path / "int8" / "slider")["status"] == "quantized"
    assert shipped_precision(tmp_path / "int8" / "slider") == "int8"
    assert shipped_precision(tmp_path / "nowhere") == "fp32"  # as reference_architecture: the defaults
    # The benchmark stands in for models/slider: whatever its threshold.json says.
    shipped = json.loads((REPO / "models" / "slider" / "threshold.json").read_text())["model"]
    assert shipped_precision(REPO / "models" / "slider") == shipped.get("precision", "fp32")


def test_ours_is_the_int8_twin_when_int8_is_wanted_and_was_made(tmp_path):
    fp32, int8 = tmp_path / "fp32" / "slider", tmp_path / "int8" / "slider"
    made = {"status": "quantized", "folder": str(int8)}
    assert ours_folder("int8", fp32, made) == int8
    assert ours_folder("fp32", fp32, made) == fp32  # the twin is then only the comparison's
    # No twin: ours stays fp32, and bench.run reports why (the refusal's reason).
    assert ours_folder("int8", fp32, {"status": "refused", "reason": "gate"}) == fp32
    assert ours_folder("int8", fp32, None) == fp32
    with pytest.raises(ValueError, match="precision is one of fp32, int8, not 'fp16'"):
        ours_folder("fp16", fp32, made)


def test_a_bench_precision_other_than_fp32_or_int8_is_refused():
    assert Config().precision is None  # the shipped model's
    with pytest.raises(ValueError, match="precision is one of fp32, int8 or None, not 'int4'"):
        Config(precision="int4")


def test_the_comparison_reuses_a_twin_made_before(tmp_path, data, monkeypatch):
    fp32, out = _detector(tmp_path), tmp_path / "int8" / "slider"
    made = quantize(fp32, data, out)
    monkeypatch.setattr("bench.precision.quantize", lambda *_: pytest.fail("quantized twice"))
    clips = read_clips(sorted((data / "test").glob("*.wav")), source="synthetic")
    row = measure(fp32, data, out, clips, intra_op_threads=1, warmup=0, quantized=made)
    assert row["status"] == "quantized" and row["n_clips"] == 3 and row["parity"] == made["parity"]

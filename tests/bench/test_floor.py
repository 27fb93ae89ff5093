"""The floor: multiply-adds counted from an ONNX graph, the one-thread GEMM rates, the share arithmetic.

The counted graph is built here with `onnx.helper`, shaped as tf2onnx shapes
its graphs (a Reshape whose target comes from `Shape` at run time), so its
multiply-adds are known by hand.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.floor import (
    CountError,
    GemmRate,
    count_macs,
    floor_ms,
    measure,
    reached,
    share_of_floor,
)


def _tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(values, name)


def _tiny_graph() -> onnx.ModelProto:
    """x [N, 1, 8, 6] -> Conv 1->4 (3x3) -> Relu -> Conv 4->4, 2 groups (3x3) -> Reshape [N, 192]
    -> MatMul [192, 5] -> Transpose -> Gemm transA (5 -> 2)."""
    rng = np.random.default_rng(0)
    weights = [
        _tensor("w1", rng.standard_normal((4, 1, 3, 3)).astype(np.float32)),
        _tensor("w2", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
        _tensor("w3", rng.standard_normal((192, 5)).astype(np.float32)),
        _tensor("w4", rng.standard_normal((5, 2)).astype(np.float32)),
        _tensor("features", np.array([192], dtype=np.int64)),
        _tensor("zero", np.array([0], dtype=np.int64)),
    ]
    same = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **same),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", group=2, **same),
        # The batch axis as tf2onnx computes it: Shape -> Gather -> Concat, known only by propagation.
        helper.make_node("Shape", ["c2"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
        helper.make_node("Concat", ["n", "features"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["c2", "target"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w3"], ["m"], name="dense"),
        helper.make_node("Transpose", ["m"], ["mt"], name="transpose", perm=[1, 0]),
        helper.make_node("Gemm", ["mt", "w4"], ["y"], name="gemm", transA=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# By hand, batch 3: Conv1 3*4*8*6 outputs x 3*3*1 = 5184; Conv2 576 outputs x 3*3*(4/2) = 10368;
# MatMul 3*5 outputs x 192 = 2880; Gemm 3*2 outputs x 5 (A is [5, 3], transposed) = 30.
BY_HAND = {"conv1": 5184, "conv2": 10368, "dense": 2880, "gemm": 30}


def test_the_tiny_graph_runs_as_described():
    session = ort.InferenceSession(_tiny_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((3, 1, 8, 6), dtype=np.float32)})
    assert y.shape == (3, 2)


def test_macs_of_a_tiny_graph_are_counted_by_hand():
    count = count_macs(_tiny_graph(), batch=3)
    assert {node.name: node.macs for node in count.nodes} == BY_HAND
    assert count.total == sum(BY_HAND.values()) == 18462
    assert count.batch == 3
    by_name = {node.name: node for node in count.nodes}
    # As one matrix product each (per group): (M, K, N) with M * K * N * groups = MACs.
    assert by_name["conv1"].gemm == (3 * 8 * 6, 9, 4)
    assert by_name["conv2"].gemm == (3 * 8 * 6, 18, 2)
    assert by_name["dense"].gemm == (3, 192, 5)
    assert by_name["gemm"].gemm == (3, 5, 2)
    assert count.largest is not None and count.largest.name == "conv2"


@pytest.mark.parametrize("batch", [1, 39])
def test_macs_grow_with_the_batch(batch):
    assert count_macs(_tiny_graph(), batch=batch).total == batch * sum(BY_HAND.values()) // 3


def test_an_unknown_shape_is_refused_by_name():
    rng = np.random.default_rng(1)
    nodes = [
        # The target shape is data fed at run time: shape inference cannot know the product's size.
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="dense"),
    ]
    graph = helper.make_graph(
        nodes,
        "unknown",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[_tensor("w", rng.standard_normal((12, 3)).astype(np.float32))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(CountError, match="MatMul node 'dense'"):
        count_macs(model, batch=2)


def test_a_quantized_graph_is_refused_for_its_fp32_original():
    rng = np.random.default_rng(2)
    scale, zero = (
        _tensor("scale", np.array(0.1, dtype=np.float32)),
        _tensor("zero", np.array(0, dtype=np.uint8)),
    )
    node = helper.make_node(
        "QLinearMatMul", ["a", "scale", "zero", "w", "scale", "wz", "scale", "zero"], ["y"], name="dense"
    )
    graph = helper.make_graph(
        [node],
        "int8",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["batch", 3])],
        initializer=[
            scale,
            zero,
            _tensor("w", rng.integers(-64, 64, (4, 3), dtype=np.int8)),
            _tensor("wz", np.array(0, dtype=np.int8)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(CountError, match=r"quantized \(QLinearMatMul\); count its fp32 original"):
        count_macs(model, batch=2)


def test_floor_and_share_arithmetic():
    # 1e9 multiply-adds at 50 GMAC/s: 20 ms.
    assert floor_ms(1_000_000_000, 50.0) == pytest.approx(20.0)
    assert math.isnan(floor_ms(10, 0.0))
    assert share_of_floor(10.0, 20.0) == 0.5
    assert math.isnan(share_of_floor(10.0, 0.0))
    assert reached(
        {"fp32": 10.0, "int8": 2.0},
        {"fp32": {"cpu": 20.0, "wall": 12.5}, "int8": {"cpu": 8.0}, "fp16": {"cpu": 1.0}},
    ) == {"fp32": {"cpu": 0.5, "wall": 0.8}, "int8": {"cpu": 0.25}}
    # 1000 x 100 x 10 products in 1 ms: 1e6 / 1e-3 s = 1 GMAC/s.
    assert GemmRate("k", "fp32", (1000, 100, 10), best_ms=1.0, runs=5).gmacs == pytest.approx(1.0)


def test_measure_gives_rates_floors_and_shares(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_graph(), path)
    row = measure(
        path,
        batch=3,
        inference={"fp32": {"median_ms": 1.0, "cpu_median_ms": 2.0}, "int8": None},
        budget_s=0.02,
    )
    assert row["macs"] == 18462 and row["gemm_shape"] == [3 * 8 * 6, 18, 2]
    kernels = [rate["kernel"] for rate in row["rates"]]
    assert (
        len(kernels) == 3
        and any("numpy" in k for k in kernels)
        and any("MatMulInteger" in k for k in kernels)
    )
    assert all(rate["gmacs"] > 0 for rate in row["rates"])
    fp32_rates = [rate["gmacs"] for rate in row["rates"] if rate["precision"] == "fp32"]
    assert row["gmacs"]["fp32"] == max(fp32_rates)
    assert row["floor_ms"]["fp32"] == pytest.approx(18462 / (row["gmacs"]["fp32"] * 1e9) * 1000)
    # Shares are floor / measured, for the measured precisions only.
    assert set(row["reached"]) == {"fp32"}
    assert row["reached"]["fp32"]["cpu"] == pytest.approx(row["floor_ms"]["fp32"] / 2.0)
    assert row["reached"]["fp32"]["wall"] == pytest.approx(row["floor_ms"]["fp32"] / 1.0)


def test_measure_reports_an_uncountable_graph_instead_of_raising(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        "unknown",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[_tensor("w", np.ones((4, 2), dtype=np.float32))],
    )
    path = tmp_path / "unknown.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    row = measure(path, batch=2, budget_s=0.02)
    assert set(row) == {"error"} and "cannot be counted" in row["error"]

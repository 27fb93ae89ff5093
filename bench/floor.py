"""A floor under our inference: the model's multiply-adds at this machine's measured GEMM rate.

Multiply-adds (`count_macs`): onnx's shape inference (with data propagation,
so the shapes that tf2onnx computes at run time from `Shape` nodes are known)
on the exported graph with its batch set to the patches of one 10 s clip;
then per node

- Conv: output elements x kernel size x input channels / groups (the
  weight's shape past its first axis);
- MatMul: output elements x the shared axis;
- Gemm: output elements x the shared axis (after `transA`).

Bias additions, activations, pooling and the up-sampling copies are left
out: they move memory, they do no products.

GEMM rates (`gemm_rates`), on one thread, for the shape of the graph's
largest convolution as a matrix product (im2col: M = batch x output
positions, K = kernel size x input channels / groups, N = output channels):
an onnxruntime `MatMul` (float32), an onnxruntime `MatMulInteger` (uint8 x
int8 -> int32, the product inside `QLinearConv`) and numpy's float32 `@` (its
BLAS held to one thread by running it in a child process with
`OPENBLAS_NUM_THREADS=1`). Each is the best of repeated runs after a
warm-up: a floor takes the fastest the core was seen to go.

The floor (`floor_ms`) is the multiply-adds at the faster float32 rate (and
at the integer rate for int8): what one core would need if every product ran
at the speed of one large, well-shaped GEMM. `share_of_floor` is floor time /
measured time: the fraction of that speed the model's inference reaches.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

REPO = Path(__file__).resolve().parents[1]
COUNTED = ("Conv", "MatMul", "Gemm")
# Their int8 twins: onnx cannot infer shapes past the com.microsoft ops a quantized graph holds.
QUANTIZED = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
# When a graph has no product to copy the shape from (e.g. a test's one-node graph): a
# convolution of the size of the default model's (39 patches of 128 x 8, 32 -> 64 channels).
FALLBACK_GEMM = (39 * 64 * 4, 9 * 64, 32)
NUMPY_KERNEL = "numpy float32 matmul (1 BLAS thread)"
_BLAS_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class CountError(ValueError):
    """A graph whose multiply-adds cannot be counted (a shape that inference left unknown)."""


@dataclass(frozen=True)
class NodeMacs:
    name: str
    op_type: str
    macs: int
    gemm: tuple[int, int, int]  # (M, K, N) of the node as one matrix product, per group


@dataclass(frozen=True)
class MacCount:
    batch: int
    nodes: tuple[NodeMacs, ...]

    @property
    def total(self) -> int:
        return sum(node.macs for node in self.nodes)

    @property
    def largest(self) -> NodeMacs | None:
        return max(self.nodes, key=lambda node: node.macs, default=None)


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of `model` whose graph inputs have `batch` as their first axis."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {init.name for init in copy.graph.initializer}
    for value in copy.graph.input:
        if value.name in initializers or not value.type.tensor_type.shape.dim:
            continue
        first = value.type.tensor_type.shape.dim[0]
        first.Clear()
        first.dim_value = batch
    return copy


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Every tensor's shape after shape inference; None for an axis it could not fix."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, tuple[int | None, ...]] = {
        init.name: tuple(int(d) for d in init.dims) for init in graph.initializer
    }
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
            )
    return shapes


def _known(shapes: dict[str, tuple[int | None, ...]], name: str, node: Any) -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None or any(d is None for d in shape):
        raise CountError(
            f"shape inference left tensor {name!r} of {node.op_type} node {node.name!r} at {shape}; "
            "its multiply-adds cannot be counted"
        )
    return tuple(int(d) for d in shape if d is not None)


def _attribute(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default


def count_macs(model: onnx.ModelProto | Path, *, batch: int) -> MacCount:
    """Multiply-adds of one run of `model` on `batch` items, per Conv / MatMul / Gemm node (module doc)."""
    import onnx

    loaded = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    quantized = sorted({node.op_type for node in loaded.graph.node if node.op_type in QUANTIZED})
    if quantized:
        raise CountError(
            f"the graph is quantized ({', '.join(quantized)}); count its fp32 original, which does the same products"
        )
    shapes = _shapes(_with_batch(loaded, batch))
    nodes = []
    for node in loaded.graph.node:
        if node.op_type not in COUNTED:
            continue
        out = _known(shapes, node.output[0], node)
        elements = math.prod(out)
        if node.op_type == "Conv":
            weight = _known(shapes, node.input[1], node)
            groups = _attribute(node, "group", 1)
            k = math.prod(weight[1:])  # kernel size x input channels / groups
            gemm = (elements // out[1], k, out[1] // groups)
        else:
            a = _known(shapes, node.input[0], node)
            # Gemm's A may come transposed; MatMul shares A's last axis (a 1-D A is that axis).
            k = a[0] if node.op_type == "Gemm" and _attribute(node, "transA", 0) else a[-1]
            gemm = (elements // out[-1], k, out[-1])
        nodes.append(NodeMacs(name=node.name, op_type=node.op_type, macs=elements * k, gemm=gemm))
    return MacCount(batch=batch, nodes=tuple(nodes))


@dataclass(frozen=True)
class GemmRate:
    kernel: str
    precision: str  # "fp32" or "int8"
    shape: tuple[int, int, int]  # (M, K, N)
    best_ms: float
    runs: int

    @property
    def gmacs(self) -> float:
        """Giga multiply-adds per second."""
        return math.prod(self.shape) / (self.best_ms / 1000) / 1e9 if self.best_ms > 0 else float("nan")


def best_ms(
    run: Callable[[], object], *, budget_s: float = 0.4, min_runs: int = 5, max_runs: int = 200
) -> tuple[float, int]:
    """The fastest of repeated calls of `run` in ms (after two warm-up calls), and how many were timed."""
    run()
    run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - started < budget_s):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * min(times), len(times)


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _matmul_graph(shape: tuple[int, int, int], *, integer: bool, rng: np.random.Generator) -> onnx.ModelProto:
    """A one-node graph A (M x K) @ B (K x N), B a constant: `MatMul` float32 or `MatMulInteger` u8 x s8."""
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = shape
    if integer:
        weight = numpy_helper.from_array(rng.integers(-64, 64, (k, n), dtype=np.int8), "b")
        zero = numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero")
        node = helper.make_node("MatMulInteger", ["a", "b", "a_zero"], ["y"])
        types, initializers = (TensorProto.UINT8, TensorProto.INT32), [weight, zero]
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        types, initializers = (TensorProto.FLOAT, TensorProto.FLOAT), [weight]
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("a", types[0], [m, k])],
        [helper.make_tensor_value_info("y", types[1], [m, n])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def onnxruntime_rate(shape: tuple[int, int, int], *, integer: bool, budget_s: float = 0.4) -> GemmRate:
    rng = np.random.default_rng(0)
    session = _session(_matmul_graph(shape, integer=integer, rng=rng))
    m, k, _ = shape
    if integer:
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        a = rng.standard_normal((m, k)).astype(np.float32)
    ms, runs = best_ms(lambda: session.run(None, {"a": a}), budget_s=budget_s)
    kernel = (
        "onnxruntime MatMulInteger (uint8 x int8 -> int32)" if integer else "onnxruntime MatMul (float32)"
    )
    return GemmRate(
        kernel=kernel, precision="int8" if integer else "fp32", shape=shape, best_ms=ms, runs=runs
    )


def _numpy_here(shape: tuple[int, int, int], budget_s: float) -> GemmRate:
    rng = np.random.default_rng(0)
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ms, runs = best_ms(lambda: a @ b, budget_s=budget_s)
    return GemmRate(kernel=NUMPY_KERNEL, precision="fp32", shape=shape, best_ms=ms, runs=runs)


def numpy_rate(shape: tuple[int, int, int], *, budget_s: float = 0.4) -> GemmRate:
    """numpy's float32 `@` on one BLAS thread: in a child process, since BLAS reads its thread count at import."""
    command = [sys.executable, "-m", "bench.floor", *(str(d) for d in shape), str(budget_s)]
    done = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **_BLAS_ONE_THREAD},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"numpy's GEMM timing failed: {done.stderr.strip().splitlines()[-1:]}")
    found = json.loads(done.stdout)
    return GemmRate(
        kernel=NUMPY_KERNEL, precision="fp32", shape=shape, best_ms=found["best_ms"], runs=found["runs"]
    )


def gemm_rates(shape: tuple[int, int, int], *, budget_s: float = 0.4) -> list[GemmRate]:
    """The three one-thread rates of the module doc for a GEMM of `shape` (M, K, N)."""
    return [
        onnxruntime_rate(shape, integer=False, budget_s=budget_s),
        onnxruntime_rate(shape, integer=True, budget_s=budget_s),
        numpy_rate(shape, budget_s=budget_s),
    ]


def floor_ms(macs: int, gmacs: float) -> float:
    """Milliseconds that `macs` multiply-adds take at `gmacs` giga multiply-adds per second."""
    return macs / (gmacs * 1e9) * 1000 if gmacs > 0 else float("nan")


def share_of_floor(floor: float, measured_ms: float) -> float:
    """floor / measured: 1.0 when the measured time is the floor, 0.5 when it takes twice as long."""
    return floor / measured_ms if measured_ms > 0 else float("nan")


def measure(
    model_path: Path,
    *,
    batch: int,
    inference: dict[str, dict[str, float] | None] | None = None,
    budget_s: float = 0.4,
) -> dict[str, Any]:
    """The floor's figures for `model_path` as a dict; {"error": reason} when they cannot be had.

    `inference` maps "fp32" / "int8" to a measured inference stage (`median_ms`,
    `cpu_median_ms`; None when not measured); "reached" holds the share of
    each floor they reach (`reached`).
    """
    try:
        count = count_macs(model_path, batch=batch)
    except ImportError as error:
        return {
            "error": f"onnx is needed to count the graph's multiply-adds ({error}); install the train extra"
        }
    except CountError as error:
        return {"error": str(error)}
    largest = count.largest
    shape = largest.gemm if largest is not None else FALLBACK_GEMM
    try:
        rates = gemm_rates(shape, budget_s=budget_s)
    except RuntimeError as error:
        return {"error": str(error), "macs": count.total}
    fp32 = max(rate.gmacs for rate in rates if rate.precision == "fp32")
    int8 = max(rate.gmacs for rate in rates if rate.precision == "int8")
    floors = {"fp32": floor_ms(count.total, fp32), "int8": floor_ms(count.total, int8)}
    found: dict[str, Any] = {
        "batch": batch,
        "macs": count.total,
        "nodes": [asdict(node) for node in count.nodes],
        "gemm_shape": list(shape),
        "gemm_from": None if largest is None else f"{largest.op_type} {largest.name}",
        "rates": [{**asdict(rate), "gmacs": rate.gmacs} for rate in rates],
        "gmacs": {"fp32": fp32, "int8": int8},  # the rates the floors use
        "floor_ms": floors,
    }
    times = {
        precision: {"cpu": stage["cpu_median_ms"], "wall": stage["median_ms"]}
        for precision, stage in (inference or {}).items()
        if stage is not None
    }
    found["reached"] = reached(floors, times)
    return found


def reached(floors: dict[str, float], measured: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per precision, the share of its floor (ms) that each of its measured inference times (ms) reaches.

    E.g. floors {"fp32": 10.0}, measured {"fp32": {"cpu": 20.0, "wall": 12.5}} -> {"fp32": {"cpu": 0.5, "wall": 0.8}}.
    """
    return {
        precision: {
            key: share_of_floor(floors[precision], ms) for key, ms in times.items() if precision in floors
        }
        for precision, times in measured.items()
        if precision in floors
    }


def summary(row: dict[str, Any]) -> str:
    """One line of what `measure` found, for the run's log."""
    if "error" in row:
        return f"no floor: {row['error']}"
    reached = "; ".join(
        f"{precision} inference CPU time reaches {100 * share.get('cpu', float('nan')):.0f} % of its floor"
        for precision, share in row["reached"].items()
    )
    return (
        f"{row['macs'] / 1e6:.0f} M multiply-adds per clip; floor fp32 {row['floor_ms']['fp32']:.2f} ms, "
        f"int8 {row['floor_ms']['int8']:.2f} ms" + (f"; {reached}" if reached else "")
    )


if __name__ == "__main__":
    # The child process of `numpy_rate`: python -m bench.floor M K N BUDGET_S, prints the rate as JSON.
    *dims, budget = sys.argv[1:]
    m_, k_, n_ = (int(d) for d in dims)
    rate = _numpy_here((m_, k_, n_), float(budget))
    print(json.dumps({"best_ms": rate.best_ms, "runs": rate.runs}))

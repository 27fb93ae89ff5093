"""The exported CAE graph is lean: one Resize per up-sampling, no shape arithmetic, static shapes but the batch.

And it still computes what Keras computes (`check_onnx`, as every export checks), at any batch size.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from training.model import CaeConfig
from training.onnx_export import check_onnx, to_onnx

from .conftest import biased_cae

# What tf2onnx made of UpSampling2D and Flatten before: Tile with run-time shape chains around it.
RUNTIME_SHAPE_OPS = {"Shape", "Slice", "Cast", "Concat", "Gather", "Unsqueeze", "Tile", "Expand"}


@pytest.mark.parametrize(
    ("config", "frames"),
    [
        (CaeConfig(), 8),  # the default: time pools 2, 2, then 1 (an up-sampling by (2, 1))
        (CaeConfig(code_frames=1), 8),
        (CaeConfig(filters=(4, 8), bottleneck=4), 16),
    ],
)
def test_the_cae_graph_is_lean_and_matches_keras(config: CaeConfig, frames: int, tmp_path: Path) -> None:
    import keras

    model = biased_cae(frames=frames, config=config)
    path = tmp_path / "model.onnx"
    to_onnx(model, path, arch="cae")
    proto = onnx.load(str(path))
    ops = Counter(node.op_type for node in proto.graph.node)

    ups = [layer for layer in model.layers if isinstance(layer, keras.layers.UpSampling2D)]
    assert ops["Resize"] == len(ups) == len(config.filters)
    assert not RUNTIME_SHAPE_OPS & set(ops), ops
    initializers = {tensor.name: tensor for tensor in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Resize":
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attributes["mode"] == b"nearest" and attributes["nearest_mode"] == b"floor"
            assert attributes["coordinate_transformation_mode"] == b"asymmetric"
            scales = onnx.numpy_helper.to_array(initializers[node.input[2]])
            assert scales[:2].tolist() == [1.0, 1.0] and set(scales[2:].tolist()) <= {1.0, 2.0}
        if node.op_type == "Reshape":
            assert node.input[1] in initializers, f"{node.name} reshapes by a computed shape"

    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph
    assert [d.dim_param for d in inferred.input[0].type.tensor_type.shape.dim[:1]] == ["batch"]
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        # The batch axis is symbolic (a Reshape by -1 names it afresh); every other axis is a number.
        assert dims[0].dim_param, value.name
        assert all(d.dim_value > 0 for d in dims[1:]), f"{value.name} has a dynamic axis beyond the batch"

    rng = np.random.default_rng(2)
    for n in (1, 37):
        patches = rng.standard_normal((n, 128, frames, 1)).astype(np.float32)
        assert check_onnx(model, path, patches) <= 1e-4  # raises above ONNX_TOLERANCE

"""Keras autoencoder to ONNX, and the check that onnxruntime reproduces Keras on real inputs.

The graph has a dynamic batch axis, input `training.model.INPUT_NAME` and
output `training.model.OUTPUT_NAME`, and every other shape static: nearest
up-sampling is one `Resize` and no node computes a shape at run time
(`lean_copy`). `check_onnx` raises `ExportError` when onnxruntime's output
differs from Keras' by more than `ONNX_TOLERANCE`.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.dataset import Arch
from training.errors import ExportError
from training.model import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import keras

OPSET = 17
ONNX_TOLERANCE = 1e-4
MAX_CHECK_PATCHES = 1024


def _resize_nearest(x: Any, *, rows: int, cols: int) -> Any:
    import tensorflow as tf

    # Not tf.image.resize: its half-pixel centres convert to a mode opset 17 lacks. Asymmetric
    # coordinates with floor rounding repeat each cell exactly, as UpSampling2D does.
    size = [int(x.shape[1]) * rows, int(x.shape[2]) * cols]
    return tf.raw_ops.ResizeNearestNeighbor(
        images=x, size=size, align_corners=False, half_pixel_centers=False
    )


def _flatten(x: Any) -> Any:
    import tensorflow as tf

    return tf.reshape(x, [-1, math.prod(int(d) for d in x.shape[1:])])


def lean_copy(model: keras.Model) -> keras.Model:
    """`model` with the layers whose conversion computes shapes at run time swapped for static ones.

    Keras builds UpSampling2D from two `repeat`s and Flatten from the input's
    run-time shape; tf2onnx turns them into Tile ops with Shape, Slice, Cast
    and Concat chains, around which onnxruntime adds layout reorders. A
    nearest resize to a static size converts to one ONNX `Resize` with
    constant scales, a reshape to (-1, n) to a Reshape by a constant. The
    swapped layers have no weights and every other layer is `model`'s own, so
    the copy computes the same function with the same weights.
    """
    import keras

    def swap(layer: keras.layers.Layer) -> keras.layers.Layer:
        channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
        if (
            isinstance(layer, keras.layers.UpSampling2D)
            and layer.interpolation == "nearest"
            and channels_last
        ):
            rows, cols = layer.size
            return keras.layers.Lambda(partial(_resize_nearest, rows=rows, cols=cols), name=layer.name)
        if isinstance(layer, keras.layers.Flatten) and channels_last:
            return keras.layers.Lambda(_flatten, name=layer.name)
        return layer

    return keras.models.clone_model(model, clone_function=swap)


def to_onnx(model: keras.Model, path: Path, *, arch: Arch) -> None:
    """Convert with a dynamic batch axis; the graph's input is `INPUT_NAME`, output `OUTPUT_NAME`."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_keras(lean_copy(model), input_signature=signature, opset=OPSET)
    # tf2onnx names the output after Keras internals ("reconstruction" or
    # "output_0" depending on versions); rename it so the bundle can name it.
    old = proto.graph.output[0].name
    if old != OUTPUT_NAME:
        for node in proto.graph.node:
            node.output[:] = [OUTPUT_NAME if o == old else o for o in node.output]
            node.input[:] = [OUTPUT_NAME if i == old else i for i in node.input]
        proto.graph.output[0].name = OUTPUT_NAME
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # instead of tf2onnx's "unk__N"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    del arch  # both architectures convert the same way; kept for symmetry with the bundle


def check_onnx(model: keras.Model, path: Path, inputs: np.ndarray) -> float:
    """Largest absolute difference between Keras and onnxruntime on `inputs`; ExportError above tolerance."""
    import onnxruntime as ort

    batch = np.ascontiguousarray(inputs[:MAX_CHECK_PATCHES], dtype=np.float32)
    if len(batch) == 0:
        raise ExportError("no patches to compare the ONNX model with Keras on")
    expected = np.asarray(model.predict(batch, batch_size=256, verbose=0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    if actual.shape != expected.shape:
        raise ExportError(f"ONNX output shape {actual.shape} differs from Keras {expected.shape}")
    difference = float(np.max(np.abs(actual - expected)))
    if not difference <= ONNX_TOLERANCE:  # also catches NaN
        raise ExportError(
            f"the ONNX model differs from Keras by {difference:.3g} on validation patches "
            f"(tolerance {ONNX_TOLERANCE:g}); nothing was exported"
        )
    return difference

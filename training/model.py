"""The two autoencoders: the project's convolutional one and the DCASE 2020 dense baseline.

Both map a standardised log-mel patch to its reconstruction; the anomaly
score is the reconstruction error (see `service.detector.Detector.score`).

* `build_cae`: input (n_mels, frames, 1). Encoder blocks Conv2D 3x3 (L2 on
  the kernel) -> ReLU -> MaxPooling2D; a dense bottleneck of a few units
  (Flatten -> Dense -> ReLU -> Dense -> ReLU -> Reshape); decoder blocks
  UpSampling2D -> Conv2D 3x3 -> ReLU; a linear 3x3 Conv2D to one channel.
  Every block halves the mel axis, so n_mels must be divisible by
  2 ** len(filters); along time a block halves only while more than
  `code_frames` frames are left (`CaeConfig.pools`), so frames is a
  multiple of 2 ** len(filters) or a smaller power of two, and the decoder
  restores the input shape exactly.
* `build_dense`: input (frames * n_mels,), the DCASE 2020 Task 2 baseline:
  Dense 128 x4 (BatchNorm + ReLU), Dense 8 (BatchNorm + ReLU), Dense 128 x4
  (BatchNorm + ReLU), linear Dense back to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.errors import ModelConfigError

if TYPE_CHECKING:
    import keras

INPUT_NAME = "log_mel"
OUTPUT_NAME = "reconstruction"


@dataclass(frozen=True)
class CaeConfig:
    """Hyper-parameters of the convolutional autoencoder (defaults measured in models/README.md)."""

    filters: tuple[int, ...] = (16, 32, 64)
    bottleneck: int = 16  # units of the dense code
    l2: float = 1e-4
    # Time cells left on the grid before the code: the encoder pools along time
    # only while more frames than this are left (see `pools`). Two beat one
    # by 0.006 and 0.003 AUC with two seeds (models/README.md).
    code_frames: int = 2

    @property
    def pooling(self) -> int:
        """Down-sampling factor along the mel axis: 2 per encoder block."""
        return int(2 ** len(self.filters))

    def pools(self, frames: int) -> list[tuple[int, int]]:
        """(mel, time) pool size of each encoder block.

        The mel axis pools by 2 in every block; time pools by 2 while more
        than `code_frames` frames are left: with the default 2, an 8-frame
        patch pools 2x2, 2x2, then 2x1, and the code is made from a 16 x 2
        grid; with 1, every block of an 8-frame patch pools 2x2.
        """
        sizes, left = [], frames
        for _ in self.filters:
            if left > self.code_frames and left % 2:
                raise ModelConfigError(
                    f"frames ({frames}) must be divisible by {self.pooling} or a smaller power of two "
                    f"(time pools by 2 in each of the {len(self.filters)} encoder blocks while more than "
                    f"{self.code_frames} frame(s) are left), so the decoder can restore it"
                )
            step = 2 if left > self.code_frames else 1
            sizes.append((2, step))
            left //= step
        return sizes

    def check(self, *, n_mels: int, frames: int) -> None:
        """Raise `ModelConfigError` unless the decoder can restore (n_mels, frames) exactly."""
        if not self.filters or any(f <= 0 for f in self.filters) or self.bottleneck <= 0:
            raise ModelConfigError(f"CAE widths must be positive and at least one block, got {self}")
        if frames <= 0 or self.code_frames <= 0:
            raise ModelConfigError(
                f"frames and code frames must be positive, got {frames} and {self.code_frames}"
            )
        if n_mels % self.pooling:
            raise ModelConfigError(
                f"n_mels ({n_mels}) must be divisible by the pooling factor "
                f"{self.pooling} (2 per encoder block, {len(self.filters)} blocks)"
            )
        self.pools(frames)


@dataclass(frozen=True)
class DenseConfig:
    """DCASE 2020 Task 2 baseline sizes."""

    hidden: int = 128
    layers_per_side: int = 4
    bottleneck: int = 8


def build_cae(*, n_mels: int, frames: int, config: CaeConfig = CaeConfig()) -> keras.Model:
    """Convolutional autoencoder; input and output shape (batch, n_mels, frames, 1)."""
    # Keras is imported here, not at module level, so that options can be
    # checked (and data errors reported) without TensorFlow's slow import.
    import keras
    from keras import layers, regularizers

    config.check(n_mels=n_mels, frames=frames)
    reg = regularizers.l2(config.l2) if config.l2 > 0 else None
    inputs = keras.Input(shape=(n_mels, frames, 1), name=INPUT_NAME)
    x = inputs
    pools = config.pools(frames)
    for i, (width, pool) in enumerate(zip(config.filters, pools, strict=True)):
        x = layers.Conv2D(width, 3, padding="same", kernel_regularizer=reg, name=f"enc{i}_conv")(x)
        x = layers.ReLU(name=f"enc{i}_relu")(x)
        x = layers.MaxPooling2D(pool, name=f"enc{i}_pool")(x)
    # The bottleneck is what makes this an anomaly detector: the whole patch
    # must pass through a few numbers, so the network can only reproduce the
    # regularities of normal sound. A dense layer there also lets every mel
    # bin inform every other (3x3 convolutions alone see about 20 bins); it
    # measured +0.05 AUC over a convolutional bottleneck (models/README.md).
    grid = tuple(int(d) for d in x.shape[1:])
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(config.bottleneck, kernel_regularizer=reg, name="bottleneck")(x)
    x = layers.ReLU(name="bottleneck_relu")(x)
    x = layers.Dense(grid[0] * grid[1] * grid[2], kernel_regularizer=reg, name="expand")(x)
    x = layers.ReLU(name="expand_relu")(x)
    x = layers.Reshape(grid, name="unflatten")(x)
    # Up-sample, then convolve: every decoder convolution, the last one at
    # the input's full resolution, learns detail between the coarse grid's
    # cells. Convolving before up-sampling (cheaper, tried first) leaves the
    # output a 3x3 smoothing of 2x2 blocks: the fine spectral lines of normal
    # sound then stay unexplained and hide anomalies (models/README.md).
    for i, (width, pool) in enumerate(zip(reversed(config.filters), reversed(pools), strict=True)):
        x = layers.UpSampling2D(pool, name=f"dec{i}_up")(x)
        x = layers.Conv2D(width, 3, padding="same", kernel_regularizer=reg, name=f"dec{i}_conv")(x)
        x = layers.ReLU(name=f"dec{i}_relu")(x)
    outputs = layers.Conv2D(1, 3, padding="same", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="cae")


def build_dense(*, n_mels: int, frames: int, config: DenseConfig = DenseConfig()) -> keras.Model:
    """DCASE 2020 baseline autoencoder; input and output shape (batch, frames * n_mels)."""
    import keras
    from keras import layers

    dim = n_mels * frames
    inputs = keras.Input(shape=(dim,), name=INPUT_NAME)
    x = inputs
    widths: Sequence[int] = (
        [config.hidden] * config.layers_per_side
        + [config.bottleneck]
        + [config.hidden] * config.layers_per_side
    )
    for i, width in enumerate(widths):
        x = layers.Dense(width, name=f"dense{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    outputs = layers.Dense(dim, name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="dense")


def build_model(arch: str, *, n_mels: int, frames: int, cae: CaeConfig = CaeConfig()) -> keras.Model:
    if arch == "cae":
        return build_cae(n_mels=n_mels, frames=frames, config=cae)
    if arch == "dense":
        return build_dense(n_mels=n_mels, frames=frames)
    raise ModelConfigError(f"unknown architecture {arch!r}; choose cae or dense")

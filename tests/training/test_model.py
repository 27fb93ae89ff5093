"""The CAE's shape rules: which patch sizes it accepts and that it gives back the input's shape."""

import numpy as np
import pytest

from training.errors import ModelConfigError
from training.model import CaeConfig, build_cae

SMALL = CaeConfig(filters=(4, 8, 8), bottleneck=4, code_frames=1)


@pytest.mark.parametrize(
    ("frames", "time_pools"),
    [(1, [1, 1, 1]), (2, [2, 1, 1]), (4, [2, 2, 1]), (8, [2, 2, 2]), (16, [2, 2, 2]), (24, [2, 2, 2])],
)
def test_time_pools_by_two_while_frames_are_left(frames, time_pools):
    assert SMALL.pools(frames) == [(2, t) for t in time_pools]
    model = build_cae(n_mels=32, frames=frames, config=SMALL)
    assert tuple(model.input_shape) == tuple(model.output_shape) == (None, 32, frames, 1)
    # The code sits on a grid of n_mels / 8 mel cells and frames / prod(time_pools) time cells.
    grid = model.get_layer("unflatten").output.shape
    assert tuple(grid[1:3]) == (32 // 8, frames // int(np.prod(time_pools)))
    x = np.random.default_rng(0).standard_normal((3, 32, frames, 1)).astype(np.float32)
    assert model(x).shape == x.shape


@pytest.mark.parametrize("frames", [3, 6, 12, 20])
def test_frames_the_decoder_cannot_restore_are_refused(frames):
    with pytest.raises(ModelConfigError, match=rf"frames \({frames}\) must be divisible by 8"):
        SMALL.check(n_mels=32, frames=frames)


def test_mels_must_divide_by_the_pooling():
    with pytest.raises(ModelConfigError, match=r"n_mels \(36\) must be divisible by .*8"):
        SMALL.check(n_mels=36, frames=8)
    with pytest.raises(ModelConfigError, match="must be positive"):
        SMALL.check(n_mels=32, frames=0)


@pytest.mark.parametrize(
    ("frames", "code_frames", "time_pools"),
    [(8, 2, [2, 2, 1]), (8, 4, [2, 1, 1]), (8, 8, [1, 1, 1]), (4, 2, [2, 1, 1]), (16, 2, [2, 2, 2])],
)
def test_code_frames_stop_time_pooling(frames, code_frames, time_pools):
    config = CaeConfig(filters=(4, 8, 8), bottleneck=4, code_frames=code_frames)
    if code_frames == 2:
        assert config.pools(frames) == CaeConfig(filters=(4, 8, 8)).pools(frames)  # the default
    assert config.pools(frames) == [(2, t) for t in time_pools]
    model = build_cae(n_mels=32, frames=frames, config=config)
    assert tuple(model.output_shape) == (None, 32, frames, 1)
    assert model.get_layer("unflatten").output.shape[2] == frames // int(np.prod(time_pools))


def test_code_frames_must_be_positive():
    with pytest.raises(ModelConfigError, match="must be positive"):
        CaeConfig(code_frames=0).check(n_mels=128, frames=8)

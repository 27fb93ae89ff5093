"""`service.patches.PatchLayout`: the one owner of how a spectrogram is cut into patches and where they lie."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.detector import Detector
from service.errors import FeatureError
from service.features import FeatureParams
from service.patches import Arch, PatchLayout
from tests.service.conftest import DEFAULT_MODEL
from tests.training.tiny_detector import FRAMES, HOP, clip, make_detector

PARAMS = FeatureParams(n_mels=4)


def _layout(*, frames: int = 8, hop: int = 4, arch: Arch = "cae") -> PatchLayout:
    return PatchLayout(frames=frames, hop=hop, arch=arch, params=PARAMS)


def test_patches_are_cut_at_the_right_frames() -> None:
    spec = np.arange(4 * 20, dtype=np.float32).reshape(4, 20)
    cut, starts = _layout().cut(spec)
    assert starts.tolist() == [0, 4, 8, 12]  # frames 16..19 are a tail shorter than a hop
    assert cut.shape == (4, 4, 8)
    np.testing.assert_array_equal(cut[2], spec[:, 8:16])


@pytest.mark.parametrize("n_frames", [0, 1, 7])
def test_a_spectrogram_shorter_than_a_patch_has_none(n_frames: int) -> None:
    cut, starts = _layout().cut(np.zeros((4, n_frames), dtype=np.float32))
    assert starts.size == 0 and cut.shape == (0, 4, 8)
    assert _layout(arch="dense").batch(np.zeros((4, n_frames), dtype=np.float32))[0].shape == (0, 32)


@pytest.mark.parametrize(("frames", "hop"), [(0, 4), (8, 0), (-1, 1)])
def test_sizes_must_be_positive(frames: int, hop: int) -> None:
    with pytest.raises(FeatureError, match="must be positive"):
        _layout(frames=frames, hop=hop)


@pytest.mark.parametrize("arch", ["cae", "dense"])
def test_graph_layout_and_its_inverse(arch: Arch) -> None:
    layout = _layout(arch=arch)
    spec = np.arange(4 * 20, dtype=np.float64).reshape(4, 20)
    batch, _ = layout.batch(spec)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    assert batch.shape[1:] == layout.input_shape == ((4, 8, 1) if arch == "cae" else (32,))
    if arch == "dense":  # frame-major: frame 0's mel bins first, as the DCASE 2020 baseline
        np.testing.assert_array_equal(batch[1, :4], spec[:, 4])
    np.testing.assert_array_equal(layout.by_mel(batch), layout.cut(spec)[0])


def test_times_are_frame_edges_cut_at_the_clip_end() -> None:
    layout = _layout()  # 512 samples per frame at 16 kHz: 32 ms
    n_samples = 19 * 512 + 100
    start, end = layout.times(layout.starts(PARAMS.n_frames(n_samples)), n_samples=n_samples)
    np.testing.assert_allclose(start, [0.0, 0.128, 0.256, 0.384])
    np.testing.assert_allclose(end, [0.256, 0.384, 0.512, n_samples / 16000])
    assert layout.min_samples == 7 * 512 and PARAMS.n_frames(layout.min_samples) == layout.frames


@pytest.mark.parametrize(("frames", "hop"), [(8, 8), (8, 3), (4, 6)])
def test_frame_means_average_the_patches_covering_each_frame(frames: int, hop: int) -> None:
    layout = _layout(frames=frames, hop=hop)
    values = np.random.default_rng(0).random((5, 4, frames)).astype(np.float32)
    total = np.zeros((4, 4 * hop + frames))
    count = np.zeros(total.shape[1])
    for k, patch in enumerate(values):
        total[:, k * hop : k * hop + frames] += patch
        count[k * hop : k * hop + frames] += 1
    expected = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    np.testing.assert_allclose(layout.frame_means(values), expected, rtol=1e-6)


@pytest.mark.parametrize("arch", ["cae", "dense"])
def test_the_detector_cuts_and_places_its_patches_by_its_layout(tmp_path: Path, arch: Arch) -> None:
    detector = Detector(make_detector(tmp_path / arch, arch=arch))
    layout = detector.layout
    assert (layout.frames, layout.hop, layout.arch) == (FRAMES, HOP, arch)
    samples = clip(seed=1, anomalous=True)
    scored = detector.score(samples, per_bin=True)
    spec = detector.features(samples)
    cut, starts = layout.cut(spec)
    # The graph halves its input, so each patch's error is the mean of (x / 2)².
    np.testing.assert_allclose(scored.patch_errors, np.square(cut / 2).mean(axis=(1, 2)), rtol=1e-5)
    start, end = layout.times(starts, n_samples=samples.size)
    np.testing.assert_array_equal(scored.patch_start, start)
    np.testing.assert_array_equal(scored.patch_end, end)
    assert detector.min_samples == layout.min_samples and detector.input_shape == layout.input_shape


def test_the_default_model_layout(models_dir: Path) -> None:
    detector = Detector(models_dir / DEFAULT_MODEL)
    bundle = detector.bundle
    assert detector.layout == PatchLayout(
        frames=bundle.patching.frames, hop=bundle.patching.hop, arch=bundle.model.arch, params=detector.params
    )

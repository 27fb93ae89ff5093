"""The fast paths compute what the straightforward ones did, to the bit where the old code was exact.

- `read_audio` reads integer PCM as integers and converts only the kept channel:
  equal bit for bit to selecting from libsndfile's own float32 read.
- `MelProjection` (the non-zero runs of the filter bank, in blocks of frames)
  equals the dense product to float32 rounding.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.audio import read_audio
from service.features import FeatureParams, MelProjection, log_mel, mel_filterbank

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_serving_never_imports_librosa():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import numpy as np\n"
        "import service.main\n"
        "from service.detector import Detector\n"
        f"detector = Detector({str(MODELS / 'slider')!r})\n"
        "detector.score(np.zeros(160000, np.float32))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('librosa', 'numba', 'scipy')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("n_mels", "n_fft"), [(128, 1024), (256, 512), (40, 2048)])
def test_projection_equals_the_dense_product(n_mels, n_fft):
    params = FeatureParams(n_fft=n_fft, n_mels=n_mels)
    basis = mel_filterbank(params)
    rng = np.random.default_rng(0)
    power = (rng.random((basis.shape[1], 777)) ** 4 * 100).astype(np.float32)
    dense = basis.astype(np.float64) @ power.astype(np.float64)
    projection = MelProjection(basis)
    projection._block = 100  # force several blocks of frames
    sparse = projection.apply(power)
    assert sparse.dtype == np.float32 and sparse.shape == dense.shape
    np.testing.assert_allclose(sparse, dense, rtol=2e-6, atol=1e-30)


def test_projection_handles_empty_bands():
    basis = np.zeros((3, 9), dtype=np.float32)
    basis[0, 2:4] = [0.5, 0.25]
    basis[2, 8] = 1.0
    basis.setflags(write=False)
    power = np.arange(9 * 4, dtype=np.float32).reshape(9, 4)
    np.testing.assert_array_equal(MelProjection(basis).apply(power), basis @ power)


def test_log_mel_of_a_long_clip_equals_it_in_pieces():
    # More frames than one STFT block and one projection block: block edges must not show.
    params = FeatureParams()
    rng = np.random.default_rng(5)
    y = (0.1 * rng.standard_normal(16000 * 61)).astype(np.float32)
    whole = log_mel(y, params)
    hop = params.hop_length
    # Frame k only depends on samples around k * hop: a middle piece gives the same middle frames.
    start, stop = 1000, 1500
    piece = log_mel(y[(start - 4) * hop : (stop + 4) * hop], params)
    np.testing.assert_allclose(piece[:, 4 : 4 + stop - start], whole[:, start:stop], atol=2e-4)


FORMATS = [
    ("WAV", "PCM_16"),
    ("WAV", "PCM_24"),
    ("WAV", "PCM_32"),
    ("WAV", "PCM_U8"),
    ("WAV", "FLOAT"),
    ("WAV", "DOUBLE"),
    ("FLAC", "PCM_16"),
    ("FLAC", "PCM_24"),
    ("AIFF", "PCM_16"),
    ("OGG", "VORBIS"),
]


@pytest.mark.parametrize(("fmt", "subtype"), FORMATS)
@pytest.mark.parametrize("channels", [1, 3, 8])
def test_read_audio_equals_libsndfiles_float_read(fmt, subtype, channels):
    rng = np.random.default_rng(channels)
    n = 65536 * 2 + 1234  # more than one decode block
    x = np.clip(0.4 * rng.standard_normal((n, channels)), -1, 1).astype(np.float32)
    x[:16] = 1.0  # full scale, so the integer sums reach their largest
    x[16:32] = -1.0
    buffer = io.BytesIO()
    sf.write(buffer, x, 16000, format=fmt, subtype=subtype)
    data = buffer.getvalue()
    reference, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    for channel in (0, channels - 1, "mean"):
        expected = reference.mean(axis=1) if channel == "mean" else reference[:, channel]
        got = read_audio(data, sample_rate=16000, channel=channel).samples
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert got.tobytes() == np.ascontiguousarray(expected, dtype=np.float32).tobytes(), (
            fmt,
            subtype,
            channel,
        )


def test_read_audio_equals_libsndfiles_float_read_on_real_recordings(real_recordings):
    for path in sorted(real_recordings.glob("*/*.wav")):
        reference, _ = sf.read(path, dtype="float32", always_2d=True)
        for channel in (0, "mean"):
            expected = reference.mean(axis=1) if channel == "mean" else reference[:, channel]
            got = read_audio(path, sample_rate=16000, channel=channel).samples
            assert got.tobytes() == np.ascontiguousarray(expected, dtype=np.float32).tobytes(), (
                path.name,
                channel,
            )


def test_read_audio_of_64_full_scale_channels_keeps_the_exact_mean():
    x = np.ones((5000, 64), dtype=np.float32)
    x[:, ::2] = -1.0
    x[:100] = -1.0
    buffer = io.BytesIO()
    sf.write(buffer, x, 16000, format="WAV", subtype="PCM_16")
    reference, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32", always_2d=True)
    got = read_audio(buffer.getvalue(), sample_rate=16000, channel="mean").samples
    assert got.tobytes() == reference.mean(axis=1).astype(np.float32).tobytes()

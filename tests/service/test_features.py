import numpy as np
import pytest

from service.audio import read_audio
from service.errors import FeatureError
from service.features import FeatureParams, log_mel, mel_filterbank


def _librosa_log_mel(y: np.ndarray, params: FeatureParams) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(
        y=y,
        sr=params.sample_rate,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        n_mels=params.n_mels,
        power=params.power,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=params.amin, top_db=None)


@pytest.mark.parametrize(
    "relative",
    ["mimii-8ch/slider_normal.wav", "mimii-8ch/fan_abnormal.wav", "dcase2020-dev/anomaly_id_01_00000000.wav"],
)
def test_log_mel_equals_librosa_on_real_clips(real_recordings, relative):
    params = FeatureParams()
    y = read_audio(real_recordings / relative, sample_rate=params.sample_rate).samples
    ours = log_mel(y, params)
    theirs = _librosa_log_mel(y, params)
    assert ours.shape == theirs.shape == (128, params.n_frames(y.size))
    assert np.abs(ours - theirs).max() < 1e-3


def test_log_mel_other_parameters_equal_librosa():
    params = FeatureParams(n_fft=512, hop_length=160, n_mels=64, power=1.0)
    rng = np.random.default_rng(3)
    t = np.arange(16000) / 16000
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    assert np.abs(log_mel(y, params) - _librosa_log_mel(y, params)).max() < 1e-3


def test_silence_hits_the_floor_not_minus_infinity():
    spec = log_mel(np.zeros(16000, dtype=np.float32))
    assert np.all(spec == pytest.approx(-100.0))


def test_tone_energy_lands_in_its_mel_band():
    params = FeatureParams()
    t = np.arange(params.sample_rate) / params.sample_rate
    spec = log_mel(np.sin(2 * np.pi * 1000 * t).astype(np.float32), params)
    import librosa

    centres = librosa.mel_frequencies(n_mels=params.n_mels + 2, fmax=params.sample_rate / 2)[1:-1]
    assert abs(centres[spec[:, 10].argmax()] - 1000) < 60


@pytest.mark.parametrize(
    ("signal", "message"),
    [
        (np.zeros((2, 100), dtype=np.float32), "mono"),
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.0, np.nan] * 600, dtype=np.float32), "NaN"),
    ],
)
def test_bad_signals_raise_feature_error(signal, message):
    with pytest.raises(FeatureError, match=message):
        log_mel(signal)


def test_bad_parameters_raise_feature_error():
    with pytest.raises(FeatureError):
        FeatureParams(power=3.0)
    with pytest.raises(FeatureError):
        FeatureParams(fmax=9000.0)


def test_packed_filter_bank_round_trips_exactly():
    from service.bundle import Features
    from service.features import mel_filterbank, pack_filters, unpack_filters

    params = FeatureParams()
    basis = mel_filterbank(params)
    first_bin, weights = pack_filters(basis)
    assert sum(len(w) for w in weights) == np.count_nonzero(basis)
    np.testing.assert_array_equal(unpack_filters(first_bin, weights, n_fft=params.n_fft), basis)
    features = Features.model_validate_json(Features.from_params(params).model_dump_json())
    np.testing.assert_array_equal(features.mel_basis(), basis)
    assert features.params() == params


def test_packed_filter_bank_of_the_wrong_size_is_refused():
    from pydantic import ValidationError

    from service.bundle import Features

    packed = Features.from_params(FeatureParams()).mel_filters
    too_wide = {"first_bin": [512, *packed.first_bin[1:]], "weights": packed.weights}
    with pytest.raises(ValidationError, match="beyond"):
        Features(mel_filters=too_wide)
    with pytest.raises(ValidationError, match="n_mels"):
        Features(n_mels=64, mel_filters=packed)


@pytest.mark.parametrize(
    "params",
    [
        FeatureParams(),
        FeatureParams(n_fft=2048, n_mels=128, fmin=50.0, fmax=7000.0),
        FeatureParams(sample_rate=48000, n_fft=4096, hop_length=1024, n_mels=64, fmin=20.0),
        FeatureParams(n_fft=512, hop_length=256, n_mels=40, fmin=900.0, fmax=1100.0 * 4),
    ],
)
def test_mel_filterbank_is_librosas(params: FeatureParams) -> None:
    import librosa.filters

    expected = librosa.filters.mel(
        sr=params.sample_rate,
        n_fft=params.n_fft,
        n_mels=params.n_mels,
        fmin=params.fmin,
        fmax=params.fmax,
        dtype=np.float32,
    )
    np.testing.assert_allclose(mel_filterbank(params), expected, rtol=1e-6, atol=1e-9)


def test_log_mel_from_many_threads_equals_one_thread():
    # Each thread has its own STFT buffers: concurrent clips must not see each other's frames.
    from concurrent.futures import ThreadPoolExecutor

    params = FeatureParams()
    rng = np.random.default_rng(7)
    clips = [(0.05 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (10, 3, 10, 7, 1, 10, 5, 2)]
    expected = [log_mel(y, params) for y in clips]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(5):
            got = list(pool.map(lambda y: log_mel(y, params), clips))
            for ours, theirs in zip(got, expected, strict=True):
                np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    "params",
    [
        FeatureParams(),
        FeatureParams(n_fft=512, hop_length=160, n_mels=64),
        FeatureParams(sample_rate=48000, n_fft=4096, hop_length=1024, n_mels=64, fmin=20.0),
        FeatureParams(n_fft=2048, n_mels=256),
    ],
)
def test_projection_equals_the_dense_product_in_products_kept_on_one_thread(params):
    from service.features import _SINGLE_THREAD_MACS, MelProjection

    basis = mel_filterbank(params)
    projection = MelProjection(basis)
    for first, last, _, weights in projection._groups:
        if weights is not None:
            # OpenBLAS would hand a larger product to a second thread.
            assert projection._block * weights.size <= _SINGLE_THREAD_MACS, (first, last)
    rng = np.random.default_rng(1)
    power = (rng.random((2 * projection._block + 17, basis.shape[1])) ** 4 * 100).astype(np.float32)
    dense = power.astype(np.float64) @ basis.T.astype(np.float64)
    mel = projection.apply_frames(power)
    assert mel.dtype == np.float32 and mel.shape == dense.shape
    np.testing.assert_allclose(mel, dense, rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(
        projection.apply(np.ascontiguousarray(power.T)), dense.T, rtol=2e-6, atol=1e-30
    )


def test_projection_of_empty_and_wide_bands():
    from service.features import _GROUP_AREA, MelProjection

    rng = np.random.default_rng(2)
    basis = np.zeros((7, _GROUP_AREA + 40), dtype=np.float32)
    basis[1, 3:6] = [0.5, 1.0, 0.5]  # bands 0, 3 and 6 stay empty
    basis[2, 5:9] = [0.25, 0.5, 0.5, 0.25]
    basis[4, 10 : _GROUP_AREA + 20] = 1.0  # wider than a group may be: a group of its own
    basis[5, _GROUP_AREA + 30] = 2.0
    power = rng.integers(0, 50, size=(9, basis.shape[1])).astype(np.float32)
    mel = MelProjection(basis).apply_frames(power)
    np.testing.assert_array_equal(mel, power @ basis.T)  # small integers: exact in any order
    assert not mel[:, [0, 3, 6]].any()

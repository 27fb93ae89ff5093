"""read_audio's block-wise decoding (kept to one channel) and its error classes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from service.audio import read_audio
from service.errors import (
    AudioLengthError,
    AudioTooLongError,
    AudioTooShortError,
    InvalidAudioError,
    InvalidChannelError,
)
from tests.service.sounds import encode, noise


def test_block_wise_read_equals_a_whole_read():
    samples = noise(5.3, 16000, 3)  # 84 800 frames: more than one 65 536-frame block
    data = encode(samples, subtype="FLOAT")
    whole = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
    assert np.array_equal(read_audio(data, sample_rate=16000, channel=2).samples, whole[:, 2])
    assert np.array_equal(read_audio(data, sample_rate=16000, channel="mean").samples, whole.mean(axis=1))


def test_nan_in_a_later_block_is_found():
    samples = noise(5.0, 16000, 2)
    samples[70000, 1] = np.nan  # second block, the channel that is not scored
    with pytest.raises(InvalidAudioError, match="NaN"):
        read_audio(encode(samples, subtype="FLOAT"), sample_rate=16000, channel=0)


def test_error_classes_keep_their_parents():
    data = encode(noise(1.0, 16000, 2))
    with pytest.raises(InvalidChannelError) as caught:
        read_audio(data, sample_rate=16000, channel=2)
    assert isinstance(caught.value, InvalidAudioError) and caught.value.code == "invalid_channel"
    with pytest.raises(AudioTooLongError) as long:
        read_audio(data, sample_rate=16000, max_seconds=0.5)
    with pytest.raises(AudioTooShortError) as short:
        read_audio(data, sample_rate=16000, min_seconds=2.0)
    assert isinstance(long.value, AudioLengthError) and isinstance(short.value, AudioLengthError)
    assert (long.value.code, short.value.code) == ("audio_too_long", "audio_too_short")

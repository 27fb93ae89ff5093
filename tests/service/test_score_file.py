"""`Detector.score_file`: a file on disk scored as the service scores an upload of it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from service.audio import Channel, read_audio
from service.detector import Detector, Score
from service.errors import (
    AudioError,
    AudioTooShortError,
    InvalidAudioError,
    InvalidChannelError,
    UndecodableAudioError,
)
from tests.service.conftest import DEFAULT_MODEL
from tests.service.sounds import noise


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> Detector:
    return Detector(models_dir / DEFAULT_MODEL)


def _write(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


def _assert_same(a: Score, b: Score) -> None:
    assert a.score == b.score
    assert np.array_equal(a.patch_errors, b.patch_errors)
    assert np.array_equal(a.patch_start, b.patch_start) and np.array_equal(a.patch_end, b.patch_end)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_wav_file_scores_as_read_audio_then_score(detector: Detector, tmp_path: Path, rate: int) -> None:
    path = _write(tmp_path / "clip.wav", noise(3.0, rate), rate)
    expected = detector.score(read_audio(path, sample_rate=16000).samples)
    _assert_same(detector.score_file(path), expected)
    _assert_same(detector.score_file(str(path)), expected)


def test_a_stereo_file_scores_the_chosen_channel(detector: Detector, tmp_path: Path) -> None:
    left, right = noise(3.0, seed=1)[:, 0], 0.5 * noise(3.0, seed=2)[:, 0]
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    channels: tuple[Channel, ...] = (0, 1, "mean")
    by_channel = {
        channel: detector.score(read_audio(path, sample_rate=16000, channel=channel).samples)
        for channel in channels
    }
    _assert_same(detector.score_file(path), by_channel[0])
    for channel, expected in by_channel.items():
        _assert_same(detector.score_file(path, channel=channel), expected)
    assert len({s.score for s in by_channel.values()}) == 3
    with pytest.raises(InvalidChannelError, match=rf"^{re.escape(str(path))}: channel 2 does not exist"):
        detector.score_file(path, channel=2)


def test_machine_id_and_per_bin_reach_score(
    detector: Detector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "clip.wav", noise(2.0))
    calls: list[dict[str, Any]] = []
    score = detector.score

    def spy(samples: np.ndarray, **kwargs: Any) -> Score:
        calls.append(kwargs)
        return score(samples, **kwargs)

    monkeypatch.setattr(detector, "score", spy)
    scored = detector.score_file(path, machine_id="02", per_bin=True)
    assert calls == [{"per_bin": True, "machine_id": "02"}]
    assert scored.bin_errors is not None and scored.bin_errors.shape == (detector.params.n_mels,)
    assert detector.score_file(path).bin_errors is None and calls[-1]["machine_id"] is None


def test_a_missing_file_is_undecodable_audio_naming_it(detector: Detector, tmp_path: Path) -> None:
    path = tmp_path / "nowhere.wav"
    with pytest.raises(UndecodableAudioError) as caught:
        detector.score_file(path)
    assert str(caught.value) == f"{path}: no such file"
    assert caught.value.code == "undecodable_audio"


@pytest.mark.parametrize(
    "content", [b"", b"hello, this is a text file\n" * 40], ids=["empty file", "not audio"]
)
def test_a_file_that_is_not_audio_is_undecodable_audio_naming_it(
    detector: Detector, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(content)
    with pytest.raises(UndecodableAudioError, match=rf"^{re.escape(str(path))}: cannot decode audio: "):
        detector.score_file(path)


def test_a_clip_too_short_for_the_model_is_refused_naming_it(detector: Detector, tmp_path: Path) -> None:
    seconds = detector.min_samples / detector.params.sample_rate
    path = _write(tmp_path / "short.wav", noise(seconds / 2))
    with pytest.raises(AudioTooShortError, match=rf"^{re.escape(str(path))}: audio is ") as caught:
        detector.score_file(path)
    # What every caller catches today: an AudioError, and a ValueError.
    assert isinstance(caught.value, AudioError) and isinstance(caught.value, ValueError)
    assert caught.value.code == "audio_too_short"
    assert detector.score_file(_write(tmp_path / "enough.wav", noise(seconds))).patch_errors.size == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_score_that_is_not_finite_is_refused_as_the_service_refuses_it(
    detector: Detector, tmp_path: Path
) -> None:
    samples = noise(2.0)
    samples[1000] = 1e30
    path = _write(tmp_path / "loud.wav", samples, subtype="FLOAT")
    with pytest.raises(
        InvalidAudioError, match=rf"^{re.escape(str(path))}: the audio gives no finite anomaly score"
    ):
        detector.score_file(path)

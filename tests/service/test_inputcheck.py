"""The input checks (`service.inputcheck`): each finding code present when it should be, absent otherwise.

Synthetic clips are seeded pink noise plus a few machine tones; the real ones
are MIMII and DCASE 2020 recordings (skipped when the shared folder is absent).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from service.audio import read_audio
from service.features import FeatureParams, log_mel, mel_filterbank
from service.inputcheck import (
    CheckLimits,
    ClipStats,
    Fingerprint,
    InputCheck,
    build_fingerprint,
    check,
    clip_stats,
)
from tests.conftest import real_recordings_dir

PARAMS = FeatureParams()
SR = PARAMS.sample_rate
# Band centres as `Detector.mel_hz` computes them.
MEL_HZ = np.argmax(mel_filterbank(PARAMS), axis=1) * (SR / PARAMS.n_fft)
SECONDS = 3.0  # 60 silence windows of 50 ms


def stats_of(samples: np.ndarray) -> ClipStats:
    y = np.asarray(samples, dtype=np.float32)
    return clip_stats(y, log_mel(y, PARAMS).mean(axis=1, dtype=np.float64), sample_rate=SR, mel_hz=MEL_HZ)


def normal_clip(*, seed: int, level_db: float = -30.0, seconds: float = SECONDS) -> np.ndarray:
    """A stationary "machine", shape (n,): pink noise, hum and a whine at `level_db` RMS (+-0.5 dB)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 50.0))
    y = np.fft.irfft(spectrum, n)
    y /= np.sqrt(np.mean(y**2))
    t = np.arange(n) / SR
    for hz, amplitude in ((100.0, 1.0), (200.0, 0.6), (300.0, 0.3), (1500.0 + 20 * rng.random(), 0.4)):
        y += amplitude * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))
    y -= y.mean()
    target = level_db + rng.uniform(-0.5, 0.5)
    return y * (10 ** (target / 20) / np.sqrt(np.mean(y**2)))


def fingerprint_of(clips: list[np.ndarray], ids: list[str] | None = None) -> Fingerprint:
    return build_fingerprint([stats_of(c) for c in clips], ids or ["00"] * len(clips))


@pytest.fixture(scope="module")
def training() -> list[np.ndarray]:
    return [normal_clip(seed=seed) for seed in range(10)]


@pytest.fixture(scope="module")
def fingerprint(training: list[np.ndarray]) -> Fingerprint:
    return fingerprint_of(training)


def codes(result: InputCheck) -> list[str]:
    assert result.status == ("warning" if result.findings else "ok")
    return [finding.code for finding in result.findings]


def finding(result: InputCheck, code: str) -> float:
    (value,) = [f.value for f in result.findings if f.code == code]
    return value


def resampled_through(y: np.ndarray, rate: int) -> np.ndarray:
    """`y` at `rate` and back at SR, as a recording made at `rate` and upsampled; shape (n,)."""
    there = soxr.resample(y.astype(np.float32), SR, rate, quality="HQ")
    return soxr.resample(there, rate, SR, quality="HQ")


def real_path(relative: str) -> Path:
    root = real_recordings_dir()
    if not root.is_dir():
        pytest.skip(f"real recordings not found at {root}")
    return root / relative


# ---- clip_stats and build_fingerprint ----------------------------------------------------------------------


def test_clip_stats_of_a_tone_with_an_offset():
    t = np.arange(SR) / SR
    y = 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.02  # 1000 whole periods
    stats = stats_of(y)
    assert stats.level_db == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=1e-4)  # the DC is not level
    assert stats.dc_offset == pytest.approx(0.02, abs=1e-6)
    assert stats.clipping_rate == 0.0
    assert stats.silence_fraction == 0.0
    assert stats.band_db.shape == (PARAMS.n_mels,)
    assert 1000 < stats.bandwidth_hz < 1300  # the band of the tone: nothing above it


def test_clip_stats_refuses_mismatched_shapes():
    y = normal_clip(seed=0)
    band_db = log_mel(y.astype(np.float32), PARAMS).mean(axis=1)
    with pytest.raises(ValueError, match="mono"):
        clip_stats(np.stack([y, y]), band_db, sample_rate=SR, mel_hz=MEL_HZ)
    with pytest.raises(ValueError, match="mono"):
        clip_stats(np.empty(0), band_db, sample_rate=SR, mel_hz=MEL_HZ)
    with pytest.raises(ValueError, match="band_db"):
        clip_stats(y, band_db[:-1], sample_rate=SR, mel_hz=MEL_HZ)


def test_build_fingerprint_summarises_the_clips(training):
    stats = [stats_of(c) for c in training]
    fingerprint = build_fingerprint(stats, ["00"] * len(stats))
    levels = [s.level_db for s in stats]
    assert fingerprint.n_clips == len(training)
    assert fingerprint.level_db == pytest.approx((np.mean(levels), np.std(levels)))
    assert np.allclose(fingerprint.band_db, np.mean([s.band_db for s in stats], axis=0), atol=0.005)
    assert fingerprint.bandwidth_hz == min(s.bandwidth_hz for s in stats)
    assert fingerprint.per_id is None  # one ID: a per-ID part would repeat the whole
    with pytest.raises(ValueError, match="machine IDs"):
        build_fingerprint(stats, ["00"])
    with pytest.raises(ValueError, match="no training clips"):
        build_fingerprint([], [])


def test_fingerprint_round_trips_through_json(training):
    fingerprint = fingerprint_of(training[:6], ["00", "00", "00", "02", "02", "02"])
    again = Fingerprint.model_validate_json(fingerprint.model_dump_json())
    assert again == fingerprint
    assert set(again.per_id) == {"00", "02"} and again.per_id["02"].n_clips == 3
    upload = stats_of(normal_clip(seed=50) * 10)
    assert check(upload, again, machine_id="02") == check(upload, fingerprint, machine_id="02")
    assert len(fingerprint.model_dump_json()) < 8000  # three parts of 128 bands


# ---- no finding for normal audio ---------------------------------------------------------------------------


def test_training_clips_and_other_normals_get_no_finding(training, fingerprint):
    for clip in training:
        assert codes(check(stats_of(clip), fingerprint)) == []
    for seed in range(100, 110):
        assert codes(check(stats_of(normal_clip(seed=seed)), fingerprint)) == []
        assert codes(check(stats_of(normal_clip(seed=seed, seconds=10.0)), fingerprint)) == []


# ---- level_offset ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gain_db", [12.0, -20.0, 7.0, -7.0])
def test_level_offset_in_both_directions(fingerprint, gain_db):
    clip = normal_clip(seed=100)
    stats = stats_of(clip * 10 ** (gain_db / 20))
    result = check(stats, fingerprint)
    assert codes(result) == ["level_offset"]
    assert finding(result, "level_offset") == pytest.approx(stats.level_db - fingerprint.level_db[0])
    assert abs(finding(result, "level_offset") - gain_db) < 1.5  # the clip's own +-0.5 dB and training's
    word = "louder" if gain_db > 0 else "quieter"
    value = finding(result, "level_offset")
    assert f"{abs(value):.1f} dB {word} than the training recordings" in result.findings[0].message


def test_level_offset_limit_is_the_setting(fingerprint):
    stats = stats_of(normal_clip(seed=100) * 10 ** (4 / 20))
    assert codes(check(stats, fingerprint)) == []
    assert codes(check(stats, fingerprint, limits=CheckLimits(level_offset_db=3.0))) == ["level_offset"]
    loud = stats_of(normal_clip(seed=100) * 10 ** (12 / 20))
    assert codes(check(loud, fingerprint, limits=CheckLimits(level_offset_db=15.0))) == []


def test_level_tolerance_widens_to_three_training_deviations():
    levels = [-50.0, -40.0, -30.0] * 3  # standard deviation 8.2 dB: tolerance 24.5 dB
    fingerprint = fingerprint_of([normal_clip(seed=s, level_db=lv) for s, lv in enumerate(levels)])
    assert fingerprint.level_db[1] == pytest.approx(8.2, abs=0.3)
    assert codes(check(stats_of(normal_clip(seed=100, level_db=-20.0)), fingerprint)) == []
    assert codes(check(stats_of(normal_clip(seed=100, level_db=-13.0)), fingerprint)) == ["level_offset"]


def test_per_id_part_is_chosen_and_unknown_ids_fall_back_to_the_whole():
    clips = [normal_clip(seed=s, level_db=-30.0) for s in range(5)] + [
        normal_clip(seed=s, level_db=-42.0) for s in range(5, 10)
    ]
    fingerprint = fingerprint_of(clips, ["00"] * 5 + ["02"] * 5)
    assert fingerprint.per_id is not None and set(fingerprint.per_id) == {"00", "02"}
    assert fingerprint.level_db[0] == pytest.approx(-36.0, abs=0.5)  # overall tolerance about 18 dB

    quiet_02 = stats_of(normal_clip(seed=100, level_db=-42.0))
    assert codes(check(quiet_02, fingerprint, machine_id="02")) == []
    as_00 = check(quiet_02, fingerprint, machine_id="00")
    assert codes(as_00) == ["level_offset"]
    expected_00 = quiet_02.level_db - fingerprint.per_id["00"].level_db[0]
    assert finding(as_00, "level_offset") == pytest.approx(expected_00)
    assert "machine ID 00" in as_00.findings[0].message

    very_quiet = stats_of(normal_clip(seed=100, level_db=-61.0))
    expected = very_quiet.level_db - fingerprint.level_db[0]  # about -25 dB: beyond the overall tolerance
    for machine_id in ("99", None):
        result = check(very_quiet, fingerprint, machine_id=machine_id)
        assert codes(result) == ["level_offset"]
        assert finding(result, "level_offset") == pytest.approx(expected)
        assert "machine ID" not in result.findings[0].message
    assert finding(check(very_quiet, fingerprint, machine_id="02"), "level_offset") == pytest.approx(
        very_quiet.level_db - fingerprint.per_id["02"].level_db[0]
    )


# ---- silence -----------------------------------------------------------------------------------------------


def test_an_all_zero_clip_is_silence_and_far_too_quiet(fingerprint):
    stats = stats_of(np.zeros(round(SECONDS * SR)))
    assert stats.silence_fraction == 1.0 and stats.bandwidth_hz == 0.0
    result = check(stats, fingerprint)
    assert codes(result) == ["level_offset", "silence"]
    assert finding(result, "silence") == 1.0
    assert finding(result, "level_offset") < -100
    InputCheck.model_validate_json(result.model_dump_json())  # finite values: valid JSON


def test_dropouts_are_silence(fingerprint):
    clip = normal_clip(seed=100)
    assert codes(check(stats_of(clip), fingerprint)) == []
    dropped = clip.copy()
    dropped[20 * 800 : 38 * 800] = 0.0  # 18 of the 60 windows of 50 ms
    result = check(stats_of(dropped), fingerprint)
    assert codes(result) == ["silence"]
    assert finding(result, "silence") == pytest.approx(0.3)
    few = clip.copy()
    few[20 * 800 : 22 * 800] = 0.0  # 2 windows: within the 5-point margin
    assert codes(check(stats_of(few), fingerprint)) == []


def test_a_dropout_to_a_noise_floor_is_silence_in_a_loud_clip():
    fingerprint = fingerprint_of([normal_clip(seed=s, level_db=-16.0) for s in range(5)])
    clip = normal_clip(seed=100, level_db=-16.0)
    # Above -90 dB FS but more than 60 dB below the clip: a recorder that lost its input.
    noise_floor = 10 ** (-82 / 20) * np.random.default_rng(1).standard_normal(12 * 800)
    clip[30 * 800 : 42 * 800] = noise_floor
    result = check(stats_of(clip), fingerprint)
    assert codes(result) == ["silence"]
    assert finding(result, "silence") == pytest.approx(0.2)


# ---- clipping ----------------------------------------------------------------------------------------------


def test_clipping_of_a_hot_clip_counts_full_scale_and_beyond():
    fingerprint = fingerprint_of([normal_clip(seed=s, level_db=-16.0) for s in range(5)])
    assert fingerprint.clipping_rate == 0.0
    hot = normal_clip(seed=100, level_db=-16.0) * 10 ** (12 / 20)
    expected = np.mean(np.abs(hot) >= 0.999)
    assert 0.001 < expected < 0.2

    as_float = check(stats_of(hot), fingerprint)  # a float file: samples beyond 1.0
    assert codes(as_float) == ["level_offset", "clipping"]
    assert finding(as_float, "clipping") == pytest.approx(expected)

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(hot, -1.0, 1.0), SR, format="WAV", subtype="PCM_16")  # flat tops at +-full scale
    pcm = read_audio(buffer.getvalue(), sample_rate=SR).samples
    assert finding(check(stats_of(pcm), fingerprint), "clipping") == pytest.approx(expected, rel=0.02)


def test_loud_clips_that_do_not_reach_full_scale_are_not_clipped(fingerprint):
    clip = normal_clip(seed=100)
    loud = clip * (0.99 / np.abs(clip).max())
    result = check(stats_of(loud), fingerprint)
    assert stats_of(loud).clipping_rate == 0.0
    assert "clipping" not in codes(result)


def test_clipping_is_judged_against_the_training_clipping():
    def clipped(rate: float, seed: int) -> np.ndarray:
        y = normal_clip(seed=seed)
        y[: round(rate * y.size)] = 1.0  # a run of clipped samples
        return y

    fingerprint = fingerprint_of([clipped(0.001, s) for s in range(5)])
    assert fingerprint.clipping_rate == pytest.approx(0.001)
    assert "clipping" not in codes(check(stats_of(clipped(0.005, 100)), fingerprint))
    result = check(stats_of(clipped(0.02, 100)), fingerprint)
    assert "clipping" in codes(result) and finding(result, "clipping") == pytest.approx(0.02)


# ---- dc_offset ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.05, -0.05])
def test_dc_offset_is_found_and_not_taken_for_a_level_change(fingerprint, offset):
    clip = normal_clip(seed=100)
    result = check(stats_of(clip + offset), fingerprint)
    assert codes(result) == ["dc_offset"]
    assert finding(result, "dc_offset") == pytest.approx(clip.mean() + offset, abs=1e-6)
    assert stats_of(clip + offset).level_db == pytest.approx(stats_of(clip).level_db, abs=1e-3)


def test_small_dc_offsets_and_the_training_own_are_not_findings():
    clip = normal_clip(seed=100)
    plain = fingerprint_of([normal_clip(seed=s) for s in range(5)])
    assert codes(check(stats_of(clip + 0.005), plain)) == []
    biased = fingerprint_of([normal_clip(seed=s) + 0.02 for s in range(5)])
    assert biased.dc_offset == pytest.approx(0.02, abs=1e-6)
    assert codes(check(stats_of(clip + 0.05), biased)) == []  # within 3 x the training's own
    assert codes(check(stats_of(clip + 0.08), biased)) == ["dc_offset"]


# ---- band_limited ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "low", "high"), [(8000, 3700, 4300), (11025, 5000, 5600)])
def test_a_recording_at_a_lower_rate_is_band_limited(fingerprint, rate, low, high):
    clip = normal_clip(seed=100)
    stats = stats_of(resampled_through(clip, rate))
    result = check(stats, fingerprint)
    assert codes(result) == ["band_limited"]
    assert low < finding(result, "band_limited") < high
    assert stats.bandwidth_hz < high
    assert f"no sound above {finding(result, 'band_limited') / 1000:.1f} kHz" in result.findings[0].message


@pytest.mark.parametrize(("cut_db", "found"), [(-15.0, False), (-60.0, True)])
def test_only_a_deep_loss_of_the_upper_bands_is_band_limited(fingerprint, cut_db, found):
    clip = normal_clip(seed=100)
    spectrum = np.fft.rfft(clip)
    spectrum[np.fft.rfftfreq(clip.size, 1 / SR) > 5000] *= 10 ** (cut_db / 20)
    result = check(stats_of(np.fft.irfft(spectrum, clip.size)), fingerprint)
    assert ("band_limited" in codes(result)) is found
    if found:
        assert 4900 < finding(result, "band_limited") < 5400


def test_pure_gain_never_triggers_band_limited(fingerprint):
    clip = normal_clip(seed=100)
    for gain_db in range(-60, 31, 5):
        result = check(stats_of(clip * 10 ** (gain_db / 20)), fingerprint)
        assert "band_limited" not in codes(result), gain_db


def test_band_limited_training_does_not_flag_band_limited_uploads(training):
    narrow = fingerprint_of([resampled_through(c, 8000) for c in training[:5]])
    assert narrow.bandwidth_hz < 4300
    assert codes(check(stats_of(resampled_through(normal_clip(seed=100), 8000)), narrow)) == []
    assert "band_limited" not in codes(check(stats_of(normal_clip(seed=100)), narrow))


# ---- real recordings ---------------------------------------------------------------------------------------


def _channels(path: Path) -> list[np.ndarray]:
    return [read_audio(path, sample_rate=SR, channel=k).samples for k in range(8)]


@pytest.mark.parametrize("machine", ["fan", "pump", "slider", "valve"])
def test_real_mimii_clip_against_its_own_channels(machine):
    channels = _channels(real_path(f"mimii-8ch/{machine}_normal.wav"))
    stats = [stats_of(y) for y in channels]
    fingerprint = build_fingerprint(stats, ["00"] * len(stats))
    for each in stats:
        assert codes(check(each, fingerprint)) == []

    clip = channels[0]
    for gain_db in (12.0, -20.0):
        scaled = stats_of(clip * 10 ** (gain_db / 20))  # float samples: beyond 1.0 is fine
        result = check(scaled, fingerprint)
        assert "level_offset" in codes(result) and "band_limited" not in codes(result)
        expected = stats[0].level_db + gain_db - fingerprint.level_db[0]
        assert finding(result, "level_offset") == pytest.approx(expected)

    result = check(stats_of(resampled_through(clip, 8000)), fingerprint)
    assert codes(result) == ["band_limited"]
    assert 3700 < finding(result, "band_limited") < 4300


def test_real_mimii_normals_of_other_machines_are_not_band_limited():
    fingerprint = build_fingerprint(
        [stats_of(y) for y in _channels(real_path("mimii-8ch/fan_normal.wav"))], ["00"] * 8
    )
    for name in ("pump_normal", "slider_normal", "valve_normal", "fan_abnormal"):
        other = stats_of(read_audio(real_path(f"mimii-8ch/{name}.wav"), sample_rate=SR).samples)
        assert "band_limited" not in codes(check(other, fingerprint)), name


def test_real_dcase_clip_against_its_own_segments():
    samples = read_audio(real_path("dcase2020-dev/normal_id_00_00000000.wav"), sample_rate=SR).samples
    segments = [samples[start : start + 2 * SR] for start in range(0, 10 * SR, 2 * SR)]
    fingerprint = build_fingerprint([stats_of(s) for s in segments], ["00"] * len(segments))
    for segment in segments:
        assert codes(check(stats_of(segment), fingerprint)) == []
    assert codes(check(stats_of(samples), fingerprint)) == []
    assert codes(check(stats_of(samples * 10 ** (12 / 20)), fingerprint)) == ["level_offset"]

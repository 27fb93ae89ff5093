"""Pseudo-anomalies change a clip as documented, relative to its own level, and reproducibly."""

from __future__ import annotations

import numpy as np
import pytest

from training.errors import SynthError
from training.pseudo import (
    KINDS,
    RANGES,
    Kind,
    add_band_noise,
    add_clicks,
    add_tone,
    change_gain,
    change_speed,
    clip_rms,
    parse_kinds,
    pseudo_anomalies,
)

SR = 16000


def _noise(seconds: float = 2.0, *, scale: float = 0.05, seed: int = 0) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, d=1 / SR)[np.argmax(spectrum)])


@pytest.mark.parametrize(("db", "ratio"), [(6.0, 1.9953), (-6.0, 0.5012), (3.0, 1.4125)])
def test_gain_scales_the_rms(db: float, ratio: float) -> None:
    x = _noise()
    assert clip_rms(change_gain(x, db=db)) / clip_rms(x) == pytest.approx(ratio, rel=1e-4)


def test_clicks_add_energy_at_their_times_and_nowhere_else() -> None:
    x = _noise()
    times = [0.5, 1.5]
    y = add_clicks(x, times_s=times, peak_db=20.0, decay_ms=1.0, sample_rate=SR, rng=np.random.default_rng(1))
    changed = np.flatnonzero(y != x)
    # Each burst lasts 8 decay constants (8 ms) from its start.
    starts = [int(t * SR) for t in times]
    assert all(any(s <= i < s + 8 * SR // 1000 + 1 for s in starts) for i in changed)
    for s in starts:
        window = slice(s, s + 16 * SR // 1000)
        gain_db = 10 * np.log10(np.sum(y[window].astype(np.float64) ** 2) / np.sum(x[window] ** 2.0))
        assert gain_db > 3.0  # a +20 dB peak decaying over 1 ms doubles the energy of its 16 ms
        # The peak is the stated level over the clip's RMS (the noise under it changes it slightly).
        assert np.max(np.abs(y[window] - x[window])) == pytest.approx(clip_rms(x) * 10.0, rel=1e-5)


def test_tone_is_at_its_frequency_and_level() -> None:
    x = _noise()
    y = add_tone(x, freq_hz=1234.0, level_db=-20.0, sample_rate=SR)
    added = y.astype(np.float64) - x
    assert clip_rms(added) / clip_rms(x) == pytest.approx(0.1, rel=1e-3)
    assert _peak_hz(added) == pytest.approx(1234.0, abs=1.0)


def test_band_noise_stays_in_its_band_at_its_level() -> None:
    x = _noise()
    y = add_band_noise(
        x, low_hz=1000.0, high_hz=2000.0, level_db=-12.0, sample_rate=SR, rng=np.random.default_rng(2)
    )
    added = y.astype(np.float64) - x
    assert clip_rms(added) / clip_rms(x) == pytest.approx(10 ** (-12 / 20), rel=1e-3)
    power = np.abs(np.fft.rfft(added)) ** 2
    freqs = np.fft.rfftfreq(added.size, d=1 / SR)
    inside = power[(freqs >= 1000.0) & (freqs <= 2000.0)].sum()
    assert inside / power.sum() > 0.999


@pytest.mark.parametrize("factor", [0.97, 1.05])
def test_speed_changes_length_and_pitch(factor: float) -> None:
    t = np.arange(2 * SR) / SR
    x = (0.3 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    y = change_speed(x, factor=factor, sample_rate=SR)
    assert y.size == pytest.approx(x.size / factor, abs=2)
    assert _peak_hz(y) == pytest.approx(1000.0 * factor, abs=2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_clip_other_seed_other_clip(kind: Kind) -> None:
    x = _noise()
    (a,) = pseudo_anomalies(x, sample_rate=SR, seed=[3, 7], kinds=[kind])
    (b,) = pseudo_anomalies(x, sample_rate=SR, seed=[3, 7], kinds=[kind])
    (c,) = pseudo_anomalies(x, sample_rate=SR, seed=[3, 8], kinds=[kind])
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.params == b.params and a.params != c.params
    assert a.samples.dtype == np.float32 and not np.array_equal(a.samples, x)
    # A kind's clip does not depend on which other kinds are asked for.
    together = {p.kind: p for p in pseudo_anomalies(x, sample_rate=SR, seed=[3, 7])}
    np.testing.assert_array_equal(together[kind].samples, a.samples)


@pytest.mark.parametrize("kind", KINDS)
def test_strength_is_relative_to_the_clip_level(kind: Kind) -> None:
    """The same draw on a clip 20 dB quieter is the same clip 20 dB quieter."""
    x = _noise()
    (loud,) = pseudo_anomalies(x, sample_rate=SR, seed=5, kinds=[kind])
    (quiet,) = pseudo_anomalies(0.1 * x, sample_rate=SR, seed=5, kinds=[kind])
    np.testing.assert_allclose(quiet.samples, 0.1 * loud.samples, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_drawn_strengths_stay_in_their_range(kind: Kind) -> None:
    low, high = RANGES[kind]
    key = {"clicks": "peak_db", "tone": "level_db", "band-noise": "level_db"}.get(kind)
    x = _noise(1.0)
    for seed in range(20):
        (p,) = pseudo_anomalies(x, sample_rate=SR, seed=seed, kinds=[kind])
        if key is not None:
            strength = p.params[key]
        elif kind == "gain":
            strength = abs(p.params["db"])
        else:
            strength = abs(p.params["factor"] - 1) * 100
        assert low <= strength <= high


def test_bad_arguments_raise_synth_error() -> None:
    x = _noise(0.5)
    with pytest.raises(SynthError, match="unknown pseudo-anomaly"):
        pseudo_anomalies(x, sample_rate=SR, seed=0, kinds=["hum"])  # type: ignore[list-item]
    with pytest.raises(SynthError, match="mono"):
        pseudo_anomalies(np.zeros((2, 100), np.float32), sample_rate=SR, seed=0)
    with pytest.raises(SynthError, match="seed"):
        pseudo_anomalies(x, sample_rate=SR, seed=-1)
    with pytest.raises(SynthError, match="outside the clip"):
        add_clicks(x, times_s=[0.6], peak_db=10, decay_ms=1, sample_rate=SR, rng=np.random.default_rng())


def test_parse_kinds() -> None:
    assert parse_kinds(None) == KINDS
    assert parse_kinds("tone, gain,tone") == ("tone", "gain")
    with pytest.raises(SynthError, match="hum"):
        parse_kinds("tone,hum")

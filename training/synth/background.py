"""Factory backgrounds: what a microphone beside a machine hears of everything else in the hall.

Two kinds. `FactoryNoise` is the slide rail's: brown/pink noise with a broad
bump, distant machines' steady tones, mains hum and dull distant impacts.
`Surroundings` is that of the other families, drawn per ID from wider
priors: brown/pink noise of its own tilt, mains hum (50 or 60 Hz with
harmonics) or none, distant knocks or none, and a neighbouring machine of
another family or none; `scene.py` puts the machine and the far sounds in a
room and colours all of it by the microphone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal

from .dsp import burst, db, noise_from_shape, oscillator, tone_phase, unit_shape, wavetable


@dataclass(frozen=True, eq=False)
class FactoryNoise:
    """The slide rail's background constants, drawn from its ID."""

    hum_hz: float
    hum_amps: np.ndarray
    hum_db: float
    bg_brown: float
    bg_brown_hz: float
    bg_pink: float
    bg_pink_hz: float
    bg_bump_hz: float
    bg_bump_gain: float
    bg_tone_hz: np.ndarray
    bg_tone_db: np.ndarray
    impact_rate: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> FactoryNoise:
        return cls(
            hum_hz=float(rng.choice([50.0, 60.0])),
            hum_amps=rng.lognormal(0.0, 0.6, 8) * np.arange(1, 9) ** -0.8,
            hum_db=rng.uniform(-14.0, -6.0),
            bg_brown=rng.uniform(0.5, 1.5),
            bg_brown_hz=rng.uniform(60.0, 200.0),
            bg_pink=rng.uniform(0.02, 0.08),
            bg_pink_hz=rng.uniform(200.0, 600.0),
            bg_bump_hz=rng.uniform(400.0, 3000.0),
            bg_bump_gain=rng.uniform(0.5, 3.0),
            bg_tone_hz=rng.uniform(250.0, 1800.0, 3),
            bg_tone_db=rng.uniform(-22.0, -12.0, 3),
            impact_rate=rng.uniform(0.1, 0.45),
        )


@lru_cache(maxsize=32)
def _factory_shape(bg: FactoryNoise, n: int, sr: int) -> np.ndarray:
    """Amplitude spectrum of the factory noise at the n-sample rfft bins, float32, unit RMS."""
    f = np.fft.rfftfreq(n, 1.0 / sr)
    # Big slow machinery gives a brown low end, air handling a pinkish middle
    # and a fan or compressor somewhere in the hall a broad bump.
    power = bg.bg_brown / (1.0 + (f / bg.bg_brown_hz) ** 2) + bg.bg_pink / (1.0 + f / bg.bg_pink_hz) + 2e-4
    power *= 1.0 + 0.02 * bg.bg_bump_gain * np.exp(-0.5 * (np.log((f + 1.0) / bg.bg_bump_hz) / 0.35) ** 2)
    power /= 1.0 + (f / (0.45 * sr)) ** 8
    power[0] = 0.0
    # Other machines hum at their own steady frequencies: a narrow spectral
    # line of noise is such a tone with a slowly wandering amplitude.
    broadband = power.sum()
    for f0, level_db in zip(bg.bg_tone_hz, bg.bg_tone_db, strict=True):
        line = np.exp(-0.5 * ((f - f0) / 1.5) ** 2)
        power += line * (broadband * 10 ** (level_db / 10) / (line.sum() or 1.0))
    shape = unit_shape(power, n)
    shape.setflags(write=False)
    return shape


def _hum(
    hum_hz: float, amps: np.ndarray, level_db: float, rng: np.random.Generator, n: int, sr: int
) -> np.ndarray:
    """Mains hum at `level_db` RMS: harmonics of `hum_hz` below 0.45 sr; float32, shape (n,)."""
    n_harm = max(1, min(amps.size, int(0.45 * sr / hum_hz)))
    table = wavetable(amps[:n_harm], rng.uniform(0, 2 * np.pi, n_harm))
    table *= np.float32(db(level_db) / math.sqrt(np.sum(amps[:n_harm] ** 2) / 2))
    return oscillator(table, tone_phase(hum_hz, n, sr, rng.uniform()))


def factory_background(bg: FactoryNoise, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """The slide rail's factory noise, float32, shape (n,), unit RMS before the impacts."""
    noise = noise_from_shape(rng, _factory_shape(bg, n, sr), n)
    out: np.ndarray = noise + _hum(bg.hum_hz, bg.hum_amps, bg.hum_db, rng, n, sr)
    out *= np.float32(1.0 / math.sqrt(1.0 + db(bg.hum_db) ** 2))

    # Distant impacts: dull, decaying thuds at random times.
    for _ in range(int(rng.poisson(bg.impact_rate * n / sr))):
        tau = rng.uniform(0.02, 0.09)
        length = min(n, int(5 * tau * sr))
        thud = rng.standard_normal(length) * np.exp(-np.arange(length) / (tau * sr))
        # Two one-pole low-passes: distance and walls swallow the highs.
        pole = math.exp(-2 * math.pi * rng.uniform(250.0, 1500.0) / sr)
        thud = signal.lfilter([(1 - pole) ** 2], [1.0, -2 * pole, pole * pole], thud)
        thud *= rng.lognormal(math.log(3.0), 0.5) / (np.max(np.abs(thud)) or 1.0)
        at = int(rng.integers(0, n))
        end = min(n, at + length)
        out[at:end] += thud[: end - at].astype(np.float32)
    return out


@dataclass(frozen=True, eq=False)
class Surroundings:
    """The background constants of a fan's, pump's or valve's ID: which sounds and how loud."""

    brown: float  # brown and pink weights and corners of the noise floor
    brown_hz: float
    pink: float
    pink_hz: float
    tilt: float  # extra slope, dB per octave above 1 kHz
    hum_hz: float  # 0: no hum
    hum_amps: np.ndarray
    hum_db: float
    knock_rate: float  # per second; 0: none
    neighbour: tuple[str, str] | None  # (family, ID) of the machine next door
    neighbour_db: float  # its level against the noise floor

    @classmethod
    def draw(cls, rng: np.random.Generator, neighbours: tuple[str, ...]) -> Surroundings:
        """Draws the constants; `neighbours` are the families a neighbouring machine may be of."""
        has_hum, has_knocks, has_neighbour = rng.uniform(size=3) < (0.75, 0.6, 0.7)
        family = str(rng.choice(neighbours)) if neighbours else ""
        neighbour_id = f"{int(rng.integers(0, 100)):02d}"
        return cls(
            brown=rng.uniform(0.2, 1.5),
            brown_hz=rng.uniform(40.0, 250.0),
            pink=rng.uniform(0.01, 0.1),
            pink_hz=rng.uniform(150.0, 800.0),
            tilt=rng.uniform(-2.0, 1.0),
            hum_hz=float(rng.choice([50.0, 60.0])) if has_hum else 0.0,
            hum_amps=rng.lognormal(0.0, 0.6, 8) * np.arange(1, 9) ** -0.8,
            hum_db=rng.uniform(-20.0, -8.0),
            knock_rate=rng.uniform(0.05, 0.5) if has_knocks else 0.0,
            neighbour=(family, neighbour_id) if has_neighbour and family else None,
            neighbour_db=rng.uniform(-10.0, -2.0),
        )

    @property
    def tonal_gain(self) -> float:
        """RMS of noise + hum + neighbour when each is at its level: divides them to unit RMS."""
        hum = db(self.hum_db) if self.hum_hz else 0.0
        near = db(self.neighbour_db) if self.neighbour else 0.0
        return math.sqrt(1.0 + hum**2 + near**2)


@lru_cache(maxsize=32)
def noise_floor_shape(bg: Surroundings, n: int, sr: int) -> np.ndarray:
    """Power spectrum of the noise floor at the n-sample rfft bins, float64, sums to 1."""
    f = np.fft.rfftfreq(n, 1.0 / sr)
    power: np.ndarray = bg.brown / (1.0 + (f / bg.brown_hz) ** 2) + bg.pink / (1.0 + f / bg.pink_hz) + 1e-4
    power *= 10.0 ** (bg.tilt * np.log2(np.maximum(f, 1000.0) / 1000.0) / 10.0)
    power /= 1.0 + (f / (0.45 * sr)) ** 8
    power[0] = 0.0
    power = power / power.sum()
    power.setflags(write=False)
    return power


def hum(bg: Surroundings, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """The ID's mains hum (zeros if it has none), float32, shape (n,), at its level against unit noise."""
    if not bg.hum_hz:
        return np.zeros(n, dtype=np.float32)
    return _hum(bg.hum_hz, bg.hum_amps, bg.hum_db, rng, n, sr)


def knocks(bg: Surroundings, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Distant knocks and thuds at random times, peaks around 3 against unit noise; float32, shape (n,)."""
    out = np.zeros(n, dtype=np.float32)
    for _ in range(int(rng.poisson(bg.knock_rate * n / sr))):
        # Distance and walls swallow the highs: dull, decaying.
        thud = burst(rng, tau_s=rng.uniform(0.01, 0.08), cutoff_hz=rng.uniform(200.0, 1500.0), sr=sr)
        thud *= rng.lognormal(math.log(3.0), 0.5)
        at = int(rng.integers(0, n))
        end = min(n, at + thud.size)
        out[at:end] += thud[: end - at].astype(np.float32)
    return out

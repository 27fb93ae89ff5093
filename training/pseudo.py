"""Pseudo-anomalies: a normal clip made faulty in five simple ways, for tuning without fault recordings.

`asd-train tune` (training/tune.py) scores a candidate detector on held-out
normal clips against their pseudo-anomalous versions made here. numpy only
(and soxr for the speed change, the service's resampler); every change is
drawn from a seeded generator, so the same seed gives the same clip.

Each kind's strength is drawn uniformly from `RANGES` and is relative to
the clip's own RMS level, so a quiet recording gets a quiet fault and a loud
one a loud fault. The ranges aim at faults a good detector can find and a
poor one can miss. Measured on synthetic slider and fan clips with the
default features (64-ms windows every 32 ms), from the weak end of each range
to the strong end, against a clip-to-clip spread of 0.4 (slider) to 1.0 dB
(fan) in a band's mean level:

==============  ==========================================  ==========================================
kind            strength (`RANGES`)                         what it does to the log-mel
==============  ==========================================  ==========================================
``clicks``      3-6 noise bursts at random times, peak      the median mel bin of a click's frame
                +12..+24 dB over the clip's RMS, decay      +1 to +10 dB; a mean over a clip's ~300
                0.5-2 ms                                    frames dilutes them (pooling matters)
``tone``        a sinusoid at -30..-18 dB re clip RMS,      its band's mean level +0.1 to +11 dB,
                150 Hz..0.75 x Nyquist (log-uniform)        least where the machine is loud there
``band-noise``  noise in 1/3..1 octave, -24..-12 dB re      the band's mean level +0.2 to +9 dB
                clip RMS, centre 200 Hz..0.6 x Nyquist
``gain``        the whole clip +-3..6 dB                    every band +-3..6 dB: what the CAE alone
                                                            misses (issue 14); less is a session's
                                                            drift
``speed``       resampled by a factor 1 +-2..5 %            harmonics move by a bin or more above
                                                            ~1 kHz; mean |change| per band 0.5-1.1 dB
==============  ==========================================  ==========================================

The changed clips are float arrays that never go through a file, so they are
not clipped at full scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import soxr

from training.errors import SynthError

Kind = Literal["clicks", "tone", "band-noise", "gain", "speed"]
KINDS: tuple[Kind, ...] = ("clicks", "tone", "band-noise", "gain", "speed")

# (low, high) of each kind's drawn strength; units in the module docstring's table.
RANGES: dict[Kind, tuple[float, float]] = {
    "clicks": (12.0, 24.0),  # peak dB over the clip's RMS
    "tone": (-30.0, -18.0),  # tone RMS, dB re clip RMS
    "band-noise": (-24.0, -12.0),  # noise RMS, dB re clip RMS
    "gain": (3.0, 6.0),  # |dB|, either sign
    "speed": (2.0, 5.0),  # |%|, either sign
}
CLICK_COUNT = (3, 6)
CLICK_DECAY_MS = (0.5, 2.0)
# The largest speed-up shortens a clip by this factor; tune reads clips long enough to survive it.
MIN_LENGTH_FACTOR = 1.0 / (1.0 + RANGES["speed"][1] / 100.0)

# A digitally silent clip has no level to be relative to; -100 dBFS stands in for it.
_MIN_RMS = 1e-5


@dataclass(frozen=True)
class Pseudo:
    """One pseudo-anomalous clip: its `kind`, `samples` (float32, shape (n',)) and the drawn `params`."""

    kind: Kind
    samples: np.ndarray
    params: dict[str, float] = field(default_factory=dict)


def clip_rms(samples: np.ndarray) -> float:
    """RMS of a waveform, shape (n,), floored at -100 dBFS."""
    x = np.asarray(samples, dtype=np.float64)
    return max(float(np.sqrt(np.mean(x * x))) if x.size else 0.0, _MIN_RMS)


def _mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1 or x.size == 0:
        raise SynthError(f"a pseudo-anomaly needs a non-empty mono waveform of shape (n,), got {x.shape}")
    return x.astype(np.float64)


def add_clicks(
    samples: np.ndarray,
    *,
    times_s: Sequence[float],
    peak_db: float,
    decay_ms: float,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add a white-noise burst with an exponential decay at each of `times_s`, its peak `peak_db` over the RMS."""
    x = _mono(samples)
    if decay_ms <= 0:
        raise SynthError(f"click decay must be positive, got {decay_ms} ms")
    tau = decay_ms * 1e-3 * sample_rate
    length = max(1, int(np.ceil(8 * tau)))  # e^-8: the tail is far below any recording's noise
    envelope = np.exp(-np.arange(length) / tau)
    peak = clip_rms(x) * 10.0 ** (peak_db / 20.0)
    out = x.copy()
    for t in times_s:
        start = int(t * sample_rate)
        if not 0 <= start < x.size:
            raise SynthError(f"click time {t} s is outside the clip ({x.size / sample_rate:.3f} s)")
        burst = envelope * rng.standard_normal(length)
        burst *= peak / np.max(np.abs(burst))
        end = min(start + length, x.size)
        out[start:end] += burst[: end - start]
    return out.astype(np.float32)


def add_tone(
    samples: np.ndarray, *, freq_hz: float, level_db: float, sample_rate: int, phase: float = 0.0
) -> np.ndarray:
    """Add a steady sinusoid whose RMS is `level_db` relative to the clip's RMS."""
    x = _mono(samples)
    if not 0 < freq_hz < sample_rate / 2:
        raise SynthError(f"tone frequency must be in (0, {sample_rate / 2:g}) Hz, got {freq_hz}")
    amplitude = np.sqrt(2.0) * clip_rms(x) * 10.0 ** (level_db / 20.0)
    t = np.arange(x.size) / sample_rate
    out: np.ndarray = x + amplitude * np.sin(2 * np.pi * freq_hz * t + phase)
    return out.astype(np.float32)


def add_band_noise(
    samples: np.ndarray,
    *,
    low_hz: float,
    high_hz: float,
    level_db: float,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add Gaussian noise limited to [low_hz, high_hz] (a brick-wall FFT mask), RMS `level_db` re the clip's."""
    x = _mono(samples)
    if not 0 <= low_hz < high_hz <= sample_rate / 2:
        raise SynthError(f"need 0 <= low < high <= {sample_rate / 2:g} Hz, got {low_hz}, {high_hz}")
    spectrum = np.fft.rfft(rng.standard_normal(x.size))
    freqs = np.fft.rfftfreq(x.size, d=1.0 / sample_rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0.0
    noise = np.fft.irfft(spectrum, n=x.size)
    level = float(np.sqrt(np.mean(noise * noise)))
    if level == 0.0:  # a clip so short that no FFT bin falls in the band
        raise SynthError(f"a {x.size}-sample clip has no frequency bin in {low_hz:.0f}-{high_hz:.0f} Hz")
    noise *= clip_rms(x) * 10.0 ** (level_db / 20.0) / level
    return (x + noise).astype(np.float32)


def change_gain(samples: np.ndarray, *, db: float) -> np.ndarray:
    """The whole clip `db` louder (negative: quieter)."""
    out: np.ndarray = _mono(samples) * 10.0 ** (db / 20.0)
    return out.astype(np.float32)


def change_speed(samples: np.ndarray, *, factor: float, sample_rate: int) -> np.ndarray:
    """Play the clip `factor` times as fast: length / factor, every frequency x factor (soxr, HQ)."""
    x = _mono(samples)
    if not 0.5 <= factor <= 2.0:
        raise SynthError(f"speed factor must be in [0.5, 2], got {factor}")
    out: np.ndarray = soxr.resample(x, sample_rate, sample_rate / factor)
    return out.astype(np.float32)


def draw(kind: Kind, samples: np.ndarray, *, sample_rate: int, rng: np.random.Generator) -> Pseudo:
    """One pseudo-anomaly of `kind`, its strength drawn uniformly from `RANGES[kind]` by `rng`."""
    if kind not in RANGES:
        raise SynthError(f"unknown pseudo-anomaly {kind!r}; choose from {', '.join(KINDS)}")
    x = _mono(samples)
    low, high = RANGES[kind]
    strength = float(rng.uniform(low, high))
    nyquist = sample_rate / 2
    params: dict[str, float]
    if kind == "clicks":
        n = int(rng.integers(CLICK_COUNT[0], CLICK_COUNT[1] + 1))
        decay = float(rng.uniform(*CLICK_DECAY_MS))
        times = sorted(float(t) for t in rng.uniform(0.0, x.size / sample_rate, size=n))
        out = add_clicks(x, times_s=times, peak_db=strength, decay_ms=decay, sample_rate=sample_rate, rng=rng)
        params = {"peak_db": strength, "decay_ms": decay, "count": n}
    elif kind == "tone":
        freq = _log_uniform(rng, 150.0, 0.75 * nyquist)
        phase = float(rng.uniform(0.0, 2 * np.pi))
        out = add_tone(x, freq_hz=freq, level_db=strength, sample_rate=sample_rate, phase=phase)
        params = {"level_db": strength, "freq_hz": freq}
    elif kind == "band-noise":
        centre = _log_uniform(rng, 200.0, 0.6 * nyquist)
        half = float(rng.uniform(1 / 3, 1.0)) / 2
        lo, hi = centre * 2.0**-half, min(centre * 2.0**half, 0.95 * nyquist)
        out = add_band_noise(x, low_hz=lo, high_hz=hi, level_db=strength, sample_rate=sample_rate, rng=rng)
        params = {"level_db": strength, "low_hz": lo, "high_hz": hi}
    elif kind == "gain":
        db = strength * _sign(rng)
        out = change_gain(x, db=db)
        params = {"db": db}
    else:
        factor = 1.0 + _sign(rng) * strength / 100.0
        out = change_speed(x, factor=factor, sample_rate=sample_rate)
        params = {"factor": factor}
    return Pseudo(kind=kind, samples=out, params=params)


def pseudo_anomalies(
    samples: np.ndarray,
    *,
    sample_rate: int,
    seed: int | Sequence[int],
    kinds: Sequence[Kind] = KINDS,
) -> list[Pseudo]:
    """One pseudo-anomalous version of `samples` per kind in `kinds`, reproducible from `seed`.

    Each kind draws from its own stream, (seed, index of the kind in `KINDS`), so a kind's
    clip is the same whichever other kinds are asked for.
    """
    entropy = [seed] if isinstance(seed, int) else list(seed)
    if not entropy or any(not isinstance(s, int | np.integer) or s < 0 for s in entropy):
        raise SynthError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}")
    out = []
    for kind in kinds:
        if kind not in RANGES:
            raise SynthError(f"unknown pseudo-anomaly {kind!r}; choose from {', '.join(KINDS)}")
        rng = np.random.default_rng([*entropy, KINDS.index(kind)])
        out.append(draw(kind, samples, sample_rate=sample_rate, rng=rng))
    return out


def parse_kinds(text: str | None) -> tuple[Kind, ...]:
    """`"clicks,tone"` -> ("clicks", "tone"); None or "" means all `KINDS`."""
    if not text:
        return KINDS
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in RANGES]
    if unknown or not names:
        raise SynthError(
            f"unknown pseudo-anomaly kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}"
        )
    return names  # type: ignore[return-value]  # each checked against RANGES' keys above


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0

"""Signal building blocks: wavetable oscillators, control-rate curves, struck modes, events, noise, filters.

Audio is float32; control-rate curves hold one value per `hop` audio samples
(value j belongs to sample j * hop). Phases at audio rate are fixed point,
uint32 with 2**32 per cycle, so they wrap exactly and cost one add per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy import signal

TABLE_BITS = 12


def child(seq: np.random.SeedSequence, key: int) -> np.random.Generator:
    """The generator of stream `key` under `seq`."""
    # Like SeedSequence.spawn, but stateless: rendering twice from one
    # SeedSequence object must give the same clip.
    return np.random.default_rng(
        np.random.SeedSequence(entropy=seq.entropy, spawn_key=(*seq.spawn_key, key), pool_size=seq.pool_size)
    )


def rms(x: np.ndarray) -> float:
    """Root mean square of `x` (any shape) in float64; 0 for an empty array."""
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def db(level_db: float) -> float:
    """Amplitude ratio of a level in dB."""
    return float(10.0 ** (level_db / 20.0))


def wavetable(amps: np.ndarray, phases: np.ndarray, *, bits: int = TABLE_BITS) -> np.ndarray:
    """One period of sum_k amps[k-1] cos(2 pi k t + phases[k-1]), float32, shape (2**bits + 1,).

    The last entry repeats the first, for interpolation across the wrap.
    """
    size = 1 << bits
    spec = np.zeros(size // 2 + 1, dtype=np.complex128)
    k = np.arange(1, amps.size + 1)
    spec[k] = amps * np.exp(1j * phases)
    table = np.fft.irfft(spec, n=size) * (size / 2)
    return np.append(table, table[0]).astype(np.float32)


SINE = wavetable(np.array([1.0]), np.array([-np.pi / 2]))


def oscillator(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Reads a wavetable (shape (2**bits + 1,)) at fixed-point phases (uint32); float32, shape of `phase`."""
    bits = (table.size - 1).bit_length() - 1
    whole = (phase >> np.uint32(32 - bits)).astype(np.intp)
    frac = (phase & np.uint32((1 << (32 - bits)) - 1)).astype(np.float32)
    frac *= np.float32(2.0 ** (bits - 32))
    lo = np.take(table[:-1], whole)
    out = np.take(table[1:], whole)
    out -= lo
    out *= frac
    out += lo
    return out


def tone_phase(freq_hz: float, n: int, sr: int, start: float) -> np.ndarray:
    """Fixed-point phase (uint32, wraps once per cycle) of a steady tone, shape (n,)."""
    inc = np.uint32(round(freq_hz / sr * 2.0**32) % 2**32)
    return np.uint32(int(start * 2.0**32) % 2**32) + np.arange(n, dtype=np.uint32) * inc


def phase(rate_c: np.ndarray, hop: int, sr: int, start: float) -> np.ndarray:
    """Control-rate phase in cycles of a control-rate frequency in Hz; same shape as `rate_c`."""
    steps = (rate_c[1:] + rate_c[:-1]) * (0.5 * hop / sr)
    return start + np.concatenate([[0.0], np.cumsum(steps)])


def audio_phase(phase_c: np.ndarray, hop: int, n: int) -> np.ndarray:
    """Fixed-point audio-rate phase (uint32), shape (n,), from a non-negative control-rate phase in cycles.

    Within a hop the phase advances by a constant increment, which must stay
    below half a cycle per sample (no aliasing). `phase_c` needs at least
    n / hop + 1 points.
    """
    base = ((phase_c - np.floor(phase_c)) * 2.0**32).astype(np.uint64).astype(np.uint32)
    inc = np.round(np.diff(phase_c) * (2.0**32 / hop)).astype(np.int64).astype(np.uint32)
    out: np.ndarray = base[:-1, None] + inc[:, None] * np.arange(hop, dtype=np.uint32)[None, :]
    return out.ravel()[:n]


def control_hop(sr: int) -> int:
    """Audio samples per control-rate point."""
    # About 1 ms: far quicker than any change of speed, far cheaper than audio rate.
    return max(1, sr // 1000)


def boxcar(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average with the edges held, same shape as `x`; keeps the integral."""
    if width <= 1 or x.size == 0:
        return x
    padded = np.concatenate([np.zeros(1), np.full(width // 2, x[0]), x, np.full(width - width // 2, x[-1])])
    c = np.cumsum(padded)
    mean: np.ndarray = (c[width:] - c[:-width])[: x.size] / width
    return mean


def upsample(x_c: np.ndarray, hop: int, n: int) -> np.ndarray:
    """Linear interpolation of a control-rate signal (value j at sample j * hop) to shape (n,), float32."""
    x_c = np.asarray(x_c, dtype=np.float32)
    if hop == 1:
        return x_c[:n].copy()
    ramp = np.arange(hop, dtype=np.float32) / np.float32(hop)
    steps: np.ndarray = x_c[:-1, None] + np.diff(x_c)[:, None] * ramp[None, :]
    return steps.ravel()[:n]


def smooth_noise(rng: np.random.Generator, size: int, width: int) -> np.ndarray:
    """Slowly varying zero-mean noise of unit RMS, shape (size,)."""
    x = boxcar(rng.standard_normal(size), width)
    return x / (rms(x) or 1.0)


def crossings(phase_c: np.ndarray, hop: int) -> np.ndarray:
    """Fractional sample positions where a non-decreasing control-rate phase passes an integer."""
    whole = np.floor(phase_c)
    j = np.flatnonzero(whole[1:] > whole[:-1])
    at: np.ndarray = (j + (whole[j + 1] - phase_c[j]) / (phase_c[j + 1] - phase_c[j])) * hop
    return at


def ringing(
    sr: int,
    freqs: Sequence[float] | np.ndarray,
    decays_s: Sequence[float] | np.ndarray,
    gains: Sequence[float] | np.ndarray,
    length_s: float,
) -> np.ndarray:
    """Struck modes: a sum of exponentially decaying sines, peak 1, shape (round(length_s * sr),)."""
    t = np.arange(max(1, round(length_s * sr))) / sr
    out = np.zeros_like(t)
    for f, tau, g in zip(freqs, decays_s, gains, strict=True):
        if f < 0.48 * sr:
            out += g * np.exp(-t / tau) * np.sin(2 * np.pi * f * t)
    peak = np.max(np.abs(out))
    return out / peak if peak > 0 else out


def place_events(n: int, at: np.ndarray, amp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """`kernel` added at fractional sample positions `at`, scaled by `amp`; float32, shape (n,)."""
    keep = (at >= 0) & (at < n)
    if not keep.any():
        return np.zeros(n, dtype=np.float32)
    at, amp = at[keep], amp[keep]
    # Split each event over its two neighbouring samples: timing is not quantised.
    whole = np.floor(at).astype(np.int64)
    frac = at - whole
    train = np.zeros(n + 1)
    np.add.at(train, whole, amp * (1 - frac))
    np.add.at(train, whole + 1, amp * frac)
    events: np.ndarray = signal.oaconvolve(train[:n], kernel)[:n].astype(np.float32)
    return events


@lru_cache(maxsize=64)
def butter(order: int, cutoff_hz: float, btype: str, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Butterworth (b, a), float32, cached."""
    b, a = signal.butter(order, cutoff_hz, btype=btype, fs=sr)
    return b.astype(np.float32), a.astype(np.float32)


def noise_spectrum(rng: np.random.Generator, shape: np.ndarray) -> np.ndarray:
    """The rfft of Gaussian noise of amplitude spectrum `shape` (float32, shape (m,)); complex64, (m,)."""
    # White Gaussian noise drawn directly as its spectrum saves an FFT.
    re_im = rng.standard_normal((2, shape.size), dtype=np.float32)
    spec: np.ndarray = (re_im[0] + 1j * re_im[1]).astype(np.complex64)
    spec *= shape * np.float32(math.sqrt(0.5))
    return spec


def noise_from_shape(rng: np.random.Generator, shape: np.ndarray, n: int) -> np.ndarray:
    """Gaussian noise of shape (n,), float32, whose amplitude spectrum at the n-sample rfft bins is `shape`.

    With `shape` scaled as `unit_shape` does, the noise has unit variance.
    """
    return np.fft.irfft(noise_spectrum(rng, shape), n).astype(np.float32)


def unit_shape(power: np.ndarray, n: int) -> np.ndarray:
    """Amplitude spectrum, float32 like `power` (shape (n // 2 + 1,)), for `noise_from_shape` of unit RMS."""
    # irfft of unit complex Gaussian bins scaled by this has unit variance.
    amplitude: np.ndarray = np.sqrt(power * (n**2 / (2 * power.sum()))).astype(np.float32)
    return amplitude


def log_bump(f: np.ndarray, centre_hz: float, width_oct: float) -> np.ndarray:
    """A Gaussian bump on a log-frequency axis, 1 at `centre_hz`, `width_oct` octaves standard deviation."""
    return np.exp(-0.5 * (np.log2((f + 1.0) / centre_hz) / width_oct) ** 2)


def burst(rng: np.random.Generator, *, tau_s: float, cutoff_hz: float, sr: int) -> np.ndarray:
    """A dull decaying noise burst: exponential envelope, two one-pole low-passes; peak 1, float64."""
    length = max(2, int(5 * tau_s * sr))
    x = rng.standard_normal(length) * np.exp(-np.arange(length) / (tau_s * sr))
    pole = math.exp(-2 * math.pi * cutoff_hz / sr)
    x = signal.lfilter([(1 - pole) ** 2], [1.0, -2 * pole, pole * pole], x)
    peaked: np.ndarray = x / (np.max(np.abs(x)) or 1.0)
    return peaked


def scatter_events(n: int, at: np.ndarray, amp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """`place_events` for the newer families: direct sums when the events are sparse; float32, shape (n,).

    The same result to float rounding; a few clicks with a long ring cost far less summed in place
    than convolved over the whole clip.
    """
    keep = (at >= 0) & (at < n)
    at, amp = at[keep], amp[keep]
    if at.size * kernel.size > n:
        return place_events(n, at, amp, kernel)
    out = np.zeros(n + kernel.size + 1)
    whole = np.floor(at).astype(np.int64)
    frac = at - whole
    for start, a, fr in zip(whole, amp, frac, strict=True):
        out[start : start + kernel.size] += (a * (1 - fr)) * kernel
        out[start + 1 : start + 1 + kernel.size] += (a * fr) * kernel
    return out[:n].astype(np.float32)


def noise32(rng: np.random.Generator, shape: np.ndarray, n: int) -> np.ndarray:
    """`noise_from_shape` in single precision throughout (the newer families); float32, shape (n,)."""
    noise: np.ndarray = scipy.fft.irfft(noise_spectrum(rng, shape), n)
    return noise

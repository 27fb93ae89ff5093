"""What the rotating machines (fan, pump) share: the shaft, its tone series, flow noise, and two rotor faults.

A rotor with B blades (or vanes) radiates a periodic pressure pattern at the
shaft rate: in a perfect rotor only every B-th shaft harmonic (the blade-pass
series) survives; residual imbalance and unequal blades leave faint other
shaft harmonics. One wavetable at the shaft rate holds the whole series, so a
changed blade pattern is a changed table, not extra oscillators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dsp import (
    SINE,
    audio_phase,
    crossings,
    db,
    oscillator,
    phase,
    ringing,
    scatter_events,
    smooth_noise,
    tone_phase,
    upsample,
    wavetable,
)

# 16,384 points: a 12 Hz shaft's harmonics up to 7 kHz get more than 20 points per cycle.
SERIES_BITS = 14


@dataclass(frozen=True, eq=False)
class Rotor:
    """The constants of one rotor, drawn from its machine's ID."""

    shaft_hz: float
    blades: int
    blade_amps: np.ndarray  # blade-pass harmonics m = 1..M, at m * blades * shaft_hz
    blade_phases: np.ndarray
    residual: np.ndarray  # complex amplitudes of shaft harmonics 1..R that are not blade-pass ones
    wander: float  # relative RMS of the slow speed wander
    spread: float  # relative RMS of the speed from clip to clip (mains frequency, load)
    breathing: float  # relative RMS of the tones' slow level wander
    bearing_ratio: float  # bearing defect rate / shaft rate
    bearing_hz: float  # the mode a bearing defect rings

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        *,
        shaft_hz: float,
        blades: int,
        n_harmonics: int,
        slope: tuple[float, float],
        residual_db: tuple[float, float],
        spread: tuple[float, float],
    ) -> Rotor:
        """Ranges: `slope` of the blade-pass series' fall-off exponent, `residual_db` of its other harmonics,
        `spread` of the clip-to-clip speed spread."""
        m = np.arange(1, n_harmonics + 1)
        amps = m ** -rng.uniform(*slope) * rng.lognormal(0.0, 0.4, m.size)
        amps[0] = 1.0
        n_residual = 3
        residual = 10 ** (rng.uniform(*residual_db, n_residual) / 20)
        residual = residual * np.exp(1j * rng.uniform(0, 2 * np.pi, n_residual))
        return cls(
            shaft_hz=shaft_hz,
            blades=blades,
            blade_amps=amps,
            blade_phases=rng.uniform(0, 2 * np.pi, m.size),
            residual=residual,
            wander=rng.uniform(0.001, 0.004),
            spread=rng.uniform(*spread),
            breathing=rng.uniform(0.03, 0.1),
            bearing_ratio=rng.uniform(3.0, 5.5),
            bearing_hz=rng.uniform(2800.0, 6500.0),
        )

    def coefficients(self, k_max: int) -> np.ndarray:
        """Complex amplitudes of shaft harmonics 1..k_max of the normal rotor, shape (k_max,)."""
        c = np.zeros(k_max, dtype=np.complex128)
        blade = self.blade_amps * np.exp(1j * self.blade_phases)
        count = min(blade.size, k_max // self.blades)
        c[self.blades - 1 :: self.blades][:count] = blade[:count]
        r = min(self.residual.size, k_max)
        c[:r] += np.where(np.arange(1, r + 1) % self.blades == 0, 0.0, self.residual[:r])
        return c

    def envelope(self, k: np.ndarray) -> np.ndarray:
        """The blade-pass series' level at shaft harmonics `k` (fractional blade harmonics k / blades)."""
        m = np.arange(1, self.blade_amps.size + 1)
        level: np.ndarray = np.interp(k / self.blades, m, self.blade_amps, right=0.0)
        return level


def harmonic_count(rotor: Rotor, top_hz: float, sr: int) -> int:
    """How many shaft harmonics stay below 0.45 sr at a top shaft rate of `top_hz`."""
    limit = rotor.blades * rotor.blade_amps.size
    return int(np.clip(0.45 * sr // top_hz, 1, min(limit, (1 << SERIES_BITS) // 8)))


def series_table(c: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Wavetable (SERIES_BITS) of shaft-harmonic complex amplitudes `c` (k = 1..c.size).

    Scaled so that the `normal` series would have unit RMS: a fault that adds
    harmonics adds energy.
    """
    table = wavetable(np.abs(c), np.angle(c), bits=SERIES_BITS)
    table *= np.float32(1.0 / math.sqrt(max(np.sum(np.abs(normal) ** 2) / 2, 1e-12)))
    return table


def blade_defect(rotor: Rotor, k_max: int, rng: np.random.Generator, *, change: float) -> np.ndarray:
    """What one blade `change` times stronger (or bent, or fouled) adds to shaft harmonics 1..k_max; complex.

    The odd blade repeats once a turn, so it adds every shaft harmonic, at
    1 / blades of the blade-pass series' level there: sub-harmonics of the
    blade-pass tone.
    """
    k = np.arange(1, k_max + 1)
    which = int(rng.integers(0, rotor.blades))
    turn = np.exp(-2j * np.pi * k * which / rotor.blades + 1j * rng.uniform(0, 2 * np.pi, k_max))
    return change / rotor.blades * rotor.envelope(k) * turn


def shaft_rate(
    rotor: Rotor, rng: np.random.Generator, size: int, hop: int, sr: int, factor: float = 1.0
) -> np.ndarray:
    """Control-rate shaft rate in Hz, shape (size,): the clip's rate times `factor` with a slow wander."""
    clip = 1.0 + rotor.spread * rng.standard_normal()
    wander = smooth_noise(rng, size, max(1, round(0.4 * sr / hop)))
    return rotor.shaft_hz * clip * factor * (1.0 + rotor.wander * wander)


def tones(table: np.ndarray, shaft_phase_c: np.ndarray, hop: int, n: int) -> np.ndarray:
    """The series of `table` played at a control-rate shaft phase (cycles); float32, shape (n,)."""
    return oscillator(table, audio_phase(shaft_phase_c, hop, n))


def flow_power(
    f: np.ndarray, *, corner_hz: float, order: float, duct_hz: float, duct_q: float, duct_gain: float, sr: int
) -> np.ndarray:
    """Power spectrum of turbulent flow noise at frequencies `f`, float64, same shape; not normalised.

    A low-pass with `order` (the turbulence's fall-off) times the comb of a
    duct or pipe with its first mode at `duct_hz`.
    """
    power = 1.0 / (1.0 + (f / corner_hz) ** 2) ** order + 1e-3
    comb = np.zeros_like(f)
    for j in range(1, 40):
        fj = j * duct_hz
        if fj > 0.45 * sr:
            break
        comb += j**-0.7 / (1.0 + ((f - fj) * duct_q / fj) ** 2)
    power *= 1.0 + duct_gain * comb
    power /= 1.0 + (f / (0.45 * sr)) ** 8
    power[0] = 0.0
    return power


def imbalance(
    machine: np.ndarray,
    shaft_phase_c: np.ndarray,
    hop: int,
    rng: np.random.Generator,
    *,
    depth: float,
    tone_level: float,
) -> np.ndarray:
    """A rotor out of balance: `machine` (n,) modulated at 1x shaft rate plus a low 1x (and 2x) tone.

    The heavy side swings the rotor once a turn: the casing's vibration and the
    air gap follow it. `tone_level` is the 1x tone's amplitude; float32, shape (n,).
    """
    n = machine.size
    offset = rng.uniform()
    am = 1.0 + depth * np.cos(2 * np.pi * (shaft_phase_c + offset))
    one_x = oscillator(SINE, audio_phase(shaft_phase_c + offset, hop, n))
    two_x = oscillator(SINE, audio_phase(2.0 * shaft_phase_c + rng.uniform(), hop, n))
    modulated: np.ndarray = machine * upsample(am, hop, n) + np.float32(tone_level) * (one_x + 0.4 * two_x)
    return modulated


def bearing(
    rotor: Rotor,
    shaft_rate_c: np.ndarray,
    shaft_phase_c: np.ndarray,
    *,
    hop: int,
    n: int,
    rng: np.random.Generator,
    peak: float,
    sr: int,
) -> np.ndarray:
    """A spalled outer race: impulses at the defect rate ringing a stiff high mode; float32, shape (n,).

    Every rolling element passing the spall strikes it (a little slip makes
    the rate wander); the blows are hardest as the spall passes the load zone,
    once a turn. `peak` is the mean impulse's peak amplitude.
    """
    slip = 1.0 + 0.01 * smooth_noise(rng, shaft_rate_c.size, max(1, round(0.05 * sr / hop)))
    at = crossings(phase(rotor.bearing_ratio * shaft_rate_c * slip, hop, sr, rng.uniform()), hop)
    turn = np.interp(at / hop, np.arange(shaft_phase_c.size), shaft_phase_c)
    load = 1.0 + 0.6 * np.cos(2 * np.pi * (turn + rng.uniform()))
    amp = peak * load * rng.lognormal(0.0, 0.25, at.size)
    f_ring = min(rotor.bearing_hz, 0.42 * sr)
    kernel = ringing(sr, [f_ring, 1.41 * f_ring], [0.0015, 0.001], [1.0, 0.5], 0.012)
    return scatter_events(n, at, amp, kernel)


def control_phase(rate_c: np.ndarray, hop: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Control-rate phase in cycles of a control-rate rate in Hz, from a random start."""
    return phase(rate_c, hop, sr, rng.uniform())


def motor_hum(
    hum_hz: float, amps: np.ndarray, level_db: float, rng: np.random.Generator, n: int, sr: int
) -> np.ndarray:
    """A motor's magnetic hum at `level_db` RMS: harmonics of `hum_hz` below 0.45 sr; float32, shape (n,)."""
    count = max(1, min(amps.size, int(0.45 * sr / hum_hz)))
    table = wavetable(amps[:count], rng.uniform(0, 2 * np.pi, count))
    table *= np.float32(db(level_db) / math.sqrt(np.sum(amps[:count] ** 2) / 2))
    return oscillator(table, tone_phase(hum_hz, n, sr, rng.uniform()))

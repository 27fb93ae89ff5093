"""Physically motivated synthetic machine sounds, written in the DCASE 2020 Task 2 layout.

MIMII/DCASE cannot be downloaded here, so tests, the demo and the default model
train on sounds made by this module. Only the slide rail (``slider``) is
modelled so far; ``_MACHINES`` is the registry that other machine types join.

A slide rail is a carriage that a stepper motor drives back and forth along a
rail through a toothed belt. A clip of one hears:

* strokes with jerk-limited trapezoidal speed profiles (start at the stepper's
  pull-in speed, accelerate, cruise, decelerate) separated by dwell times, the
  return stroke at its own speed;
* the stepper's torque ripple, a harmonic series on the step rate: every
  harmonic sweeps up and down with the carriage speed;
* the drive's chopper whine: faint while dwelling, with sidebands that spread
  from the carrier as the step rate rises while moving;
* rolling noise of the carriage bearings, broadband, growing with speed;
* all of it coloured by the rail and carriage: a high-passed direct path plus
  a few resonant modes;
* factory background: brown/pink noise, a broad bump, distant machines' tones,
  mains hum with harmonics and occasional dull distant impacts, at an SNR.

Every machine ID has its own stroke length, speeds, step rate, harmonic
pattern, resonances, dwell times, background and loudness, all derived from
the ID alone. Within an ID, clips vary by speed and dwell jitter, the phase of
the stroke cycle at the clip start and all the noises.

Anomalies (``ANOMALY_KINDS``), each with a severity drawn uniformly in [0, 1]
that scales its strength within ``_STRENGTH``:

* ``dent``: a dent in the rail; both bearing blocks of the carriage click (a
  ringing, decaying burst) each time they pass the same position;
* ``squeal``: dry-friction squeal, a narrow-band tone with a slight wobble that
  comes and goes while the carriage slides;
* ``loose_belt``: the slack belt flutters (modulates the transmitted sound)
  and slaps, a low-frequency rattle, with a thump at each stroke start;
* ``speed``: the carriage runs 8-22 % faster or slower; the harmonics shift
  and the stroke timing changes;
* ``stall``: the carriage stops for a moment mid-stroke; the motor, energised
  but not turning, whines and buzzes;
* ``bearing``: a spalled bearing race; impulses at a rate proportional to
  speed ring a stiff high mode.

Levels are absolute within an ID: its normal machine sound is calibrated once
(one nominal render) and one gain per ID and SNR applies to normal and
anomalous clips alike, so an anomaly that adds energy is louder, as it would
be at a fixed microphone.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf
from scipy import signal

SAMPLE_RATE = 16000
ANOMALY_KINDS: tuple[str, ...] = ("dent", "squeal", "loose_belt", "speed", "stall", "bearing")

# Mixture RMS before the ID's loudness offset: -30 dBFS leaves headroom for
# clicks and impacts (real MIMII slider clips sit lower still, near -45 dBFS).
_TARGET_RMS = 0.0316
_TABLE_BITS = 12
_TABLE_SIZE = 1 << _TABLE_BITS
_CALIBRATION_SECONDS = 10.0
# Beside the test clips: file,machine_id,kind,severity of each anomalous clip.
ANOMALY_KINDS_FILE = "anomaly_kinds.csv"
_SPLITS = {"train_normal": 0, "test_normal": 1, "test_anomaly": 2}

# Severity s in [0, 1] maps linearly from the first value (s = 0) to the
# second (s = 1). Levels are dB relative to the ID's calibrated normal machine
# RMS (peak level for the impulsive kinds). Tuned so that a per-mel-bin
# Gaussian baseline catches each kind only partly (AUC about 0.5-0.9).
_STRENGTH: dict[str, tuple[float, float]] = {
    "dent": (11.0, 19.0),  # click peak, dB
    "squeal": (-6.0, 4.0),  # tone level, dB
    "loose_belt": (-4.0, 4.0),  # rattle peak, dB
    "loose_belt_flutter": (0.2, 0.55),  # modulation depth
    "speed": (0.08, 0.22),  # relative speed change, either sign
    "stall": (-6.0, 2.0),  # whine and buzz level, dB
    "stall_hold": (0.12, 0.45),  # seconds stopped
    "bearing": (7.0, 15.0),  # impulse peak, dB
}


@dataclass(frozen=True)
class SynthSummary:
    """What `generate_dataset` wrote.

    `root` is the machine type's folder (``OUT/<machine_type>``); the counts
    are totals over all IDs; `kind_counts` counts anomalous clips per kind;
    `seconds` is the audio written.
    """

    root: Path
    machine_type: str
    ids: tuple[str, ...]
    n_train: int
    n_test_normal: int
    n_test_anomaly: int
    kind_counts: dict[str, int]
    seconds: float

    @property
    def n_files(self) -> int:
        return self.n_train + self.n_test_normal + self.n_test_anomaly


@dataclass(frozen=True)
class _Rendered:
    audio: np.ndarray
    severity: float


class _MachineModel(Protocol):
    anomaly_kinds: tuple[str, ...]

    def render(
        self,
        machine_id: str,
        *,
        anomaly: str | None,
        seq: np.random.SeedSequence,
        duration: float,
        sample_rate: int,
        snr_db: float | None,
    ) -> _Rendered: ...


def _strength(name: str, severity: float) -> float:
    lo, hi = _STRENGTH[name]
    return lo + (hi - lo) * severity


def _child(seq: np.random.SeedSequence, key: int) -> np.random.Generator:
    # Like SeedSequence.spawn, but stateless: rendering twice from one
    # SeedSequence object must give the same clip.
    return np.random.default_rng(
        np.random.SeedSequence(entropy=seq.entropy, spawn_key=(*seq.spawn_key, key), pool_size=seq.pool_size)
    )


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _db(level_db: float) -> float:
    return 10.0 ** (level_db / 20.0)


def _wavetable(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """One period of sum_k amps[k-1] cos(2 pi k t + phases[k-1]), float32, shape (_TABLE_SIZE + 1,).

    The last entry repeats the first, for interpolation across the wrap.
    """
    spec = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)
    k = np.arange(1, amps.size + 1)
    spec[k] = amps * np.exp(1j * phases)
    table = np.fft.irfft(spec, n=_TABLE_SIZE) * (_TABLE_SIZE / 2)
    return np.append(table, table[0]).astype(np.float32)


_SINE = _wavetable(np.array([1.0]), np.array([-np.pi / 2]))


def _oscillator(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Reads a wavetable at fixed-point phases (uint32, 2**32 per cycle); float32, same shape as `phase`."""
    whole = (phase >> np.uint32(32 - _TABLE_BITS)).astype(np.intp)
    frac = (phase & np.uint32((1 << (32 - _TABLE_BITS)) - 1)).astype(np.float32)
    frac *= np.float32(2.0 ** (_TABLE_BITS - 32))
    lo = np.take(table[:-1], whole)
    out = np.take(table[1:], whole)
    out -= lo
    out *= frac
    out += lo
    return out


def _tone_phase(freq_hz: float, n: int, sr: int, start: float) -> np.ndarray:
    """Fixed-point phase (uint32, wraps once per cycle) of a steady tone, shape (n,)."""
    inc = np.uint32(round(freq_hz / sr * 2.0**32) % 2**32)
    return np.uint32(int(start * 2.0**32) % 2**32) + np.arange(n, dtype=np.uint32) * inc


def _phase(rate_c: np.ndarray, hop: int, sr: int, start: float) -> np.ndarray:
    """Control-rate phase in cycles of a control-rate frequency in Hz; same shape as `rate_c`."""
    steps = (rate_c[1:] + rate_c[:-1]) * (0.5 * hop / sr)
    return start + np.concatenate([[0.0], np.cumsum(steps)])


def _audio_phase(phase_c: np.ndarray, hop: int, n: int) -> np.ndarray:
    """Fixed-point audio-rate phase (uint32), shape (n,), from a non-negative control-rate phase in cycles.

    Within a hop the phase advances by a constant increment, which must stay
    below half a cycle per sample (no aliasing).
    """
    base = ((phase_c - np.floor(phase_c)) * 2.0**32).astype(np.uint64).astype(np.uint32)
    inc = np.round(np.diff(phase_c) * (2.0**32 / hop)).astype(np.int64).astype(np.uint32)
    out = base[:-1, None] + inc[:, None] * np.arange(hop, dtype=np.uint32)[None, :]
    return out.ravel()[:n]


def _boxcar(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average with the edges held, same shape as `x`; keeps the integral."""
    if width <= 1 or x.size == 0:
        return x
    padded = np.concatenate([np.zeros(1), np.full(width // 2, x[0]), x, np.full(width - width // 2, x[-1])])
    c = np.cumsum(padded)
    return (c[width:] - c[:-width])[: x.size] / width


def _upsample(x_c: np.ndarray, hop: int, n: int) -> np.ndarray:
    """Linear interpolation of a control-rate signal (value j at sample j * hop) to shape (n,), float32."""
    x_c = np.asarray(x_c, dtype=np.float32)
    if hop == 1:
        return x_c[:n].copy()
    ramp = np.arange(hop, dtype=np.float32) / np.float32(hop)
    return (x_c[:-1, None] + np.diff(x_c)[:, None] * ramp[None, :]).ravel()[:n]


def _smooth_noise(rng: np.random.Generator, size: int, width: int) -> np.ndarray:
    """Slowly varying zero-mean noise of unit RMS, shape (size,)."""
    x = _boxcar(rng.standard_normal(size), width)
    return x / (_rms(x) or 1.0)


def _crossings(phase_c: np.ndarray, hop: int) -> np.ndarray:
    """Fractional sample positions where a non-decreasing control-rate phase passes an integer."""
    whole = np.floor(phase_c)
    j = np.flatnonzero(whole[1:] > whole[:-1])
    return (j + (whole[j + 1] - phase_c[j]) / (phase_c[j + 1] - phase_c[j])) * hop


def _ringing(
    sr: int, freqs: Sequence[float], decays_s: Sequence[float], gains: Sequence[float], length_s: float
) -> np.ndarray:
    """Struck modes: a sum of exponentially decaying sines, peak 1, shape (round(length_s * sr),)."""
    t = np.arange(max(1, round(length_s * sr))) / sr
    out = np.zeros_like(t)
    for f, tau, g in zip(freqs, decays_s, gains):
        if f < 0.48 * sr:
            out += g * np.exp(-t / tau) * np.sin(2 * np.pi * f * t)
    peak = np.max(np.abs(out))
    return out / peak if peak > 0 else out


def _place_events(n: int, at: np.ndarray, amp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
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
    return signal.oaconvolve(train[:n], kernel)[:n].astype(np.float32)


@lru_cache(maxsize=64)
def _butter(order: int, cutoff_hz: float, btype: str, sr: int) -> tuple[np.ndarray, np.ndarray]:
    b, a = signal.butter(order, cutoff_hz, btype=btype, fs=sr)
    return b.astype(np.float32), a.astype(np.float32)


@dataclass(frozen=True, eq=False)
class _SliderCharacter:
    """One slide rail's constants, all drawn from its ID."""

    machine_id: str
    stroke_m: float
    v_fwd: float  # cruise speeds, m/s
    v_back: float
    ramp_s: float
    start_ratio: float  # pull-in speed / cruise speed
    jerk_s: float
    dwell_fwd_s: float  # dwell after a forward stroke
    dwell_back_s: float
    steps_per_m: float
    harmonic_amps: np.ndarray
    harmonic_phases: np.ndarray
    accel_boost: float
    res_hz: np.ndarray
    res_q: np.ndarray
    res_gain: np.ndarray
    direct_gain: float
    radiation_hz: float
    rolling_gain: float
    rolling_hp_hz: float
    whine_hz: float
    idle_whine_db: float
    chopper_db: float
    belt_slaps_per_m: float
    belt_rattle_hz: float
    race_hits_per_m: float
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
    loudness_db: float
    snr_db: float


@lru_cache(maxsize=128)
def _slider_character(machine_id: str) -> _SliderCharacter:
    rng = np.random.default_rng(np.random.SeedSequence([zlib.crc32(b"slider"), int(machine_id)]))
    stroke = rng.uniform(0.12, 0.30)
    v_fwd = stroke / rng.uniform(0.32, 0.62)
    # Belt-driven steppers cruise at some hundreds of full steps per second.
    step_hz = rng.uniform(420.0, 800.0)
    # The torque ripple is strongest at multiples of the motor's phase count.
    n_phases = int(rng.choice([2, 3, 4, 5]))
    k = np.arange(1, 64)
    amps = k ** -rng.uniform(0.2, 0.6) * (1.0 + rng.uniform(0.8, 2.0) * (k % n_phases == 0))
    amps *= rng.lognormal(0.0, 0.5, k.size)
    n_res = int(rng.integers(4, 7))
    return _SliderCharacter(
        machine_id=machine_id,
        stroke_m=stroke,
        v_fwd=v_fwd,
        v_back=v_fwd * rng.uniform(0.8, 1.35),
        ramp_s=rng.uniform(0.07, 0.17),
        start_ratio=rng.uniform(0.4, 0.65),
        jerk_s=rng.uniform(0.015, 0.035),
        dwell_fwd_s=rng.uniform(0.2, 0.6),
        dwell_back_s=rng.uniform(0.2, 0.6),
        steps_per_m=step_hz / v_fwd,
        harmonic_amps=amps,
        harmonic_phases=rng.uniform(0, 2 * np.pi, k.size),
        accel_boost=rng.uniform(0.3, 0.9),
        res_hz=np.sort(np.exp(rng.uniform(np.log(700.0), np.log(7000.0), n_res))),
        res_q=rng.uniform(8.0, 30.0, n_res),
        res_gain=rng.lognormal(0.0, 0.4, n_res),
        direct_gain=rng.uniform(0.6, 1.0),
        radiation_hz=rng.uniform(500.0, 1400.0),
        rolling_gain=rng.uniform(0.1, 0.3),
        rolling_hp_hz=rng.uniform(300.0, 1200.0),
        whine_hz=rng.uniform(2500.0, 6500.0),
        idle_whine_db=rng.uniform(-40.0, -32.0),
        chopper_db=rng.uniform(-24.0, -14.0),
        belt_slaps_per_m=rng.uniform(6.0, 14.0) / v_fwd,
        belt_rattle_hz=rng.uniform(90.0, 260.0),
        race_hits_per_m=rng.uniform(45.0, 110.0) / v_fwd,
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
        loudness_db=rng.uniform(-2.0, 2.0),
        snr_db=rng.uniform(3.0, 9.0),
    )


@dataclass(frozen=True)
class _Motion:
    """Carriage kinematics at control rate: value j belongs to audio sample j * hop.

    The arrays have shape (n // hop + 2,): they cover the clip with a spare point.
    """

    hop: int
    speed: np.ndarray  # |v|, m/s
    accel: np.ndarray  # |dv/dt|, m/s^2
    position: np.ndarray  # m from the forward stroke's start
    holding: np.ndarray  # 1 while stalled mid-stroke, else 0
    starts: np.ndarray  # audio-sample positions of stroke starts within the clip
    cruise_v: float  # this clip's forward cruise speed


def _control_hop(sr: int) -> int:
    # About 1 ms: far quicker than any change of speed, far cheaper than audio rate.
    return max(1, sr // 1000)


def _slider_motion(
    ch: _SliderCharacter,
    rng: np.random.Generator,
    *,
    n: int,
    sr: int,
    speed_factor: float = 1.0,
    stall_rng: np.random.Generator | None = None,
    stall_severity: float = 0.0,
) -> _Motion:
    duration = n / sr
    # A fixed number of per-stroke draws, enough for the fastest and the
    # slowest clip: a normal clip's timing must not depend on how many
    # strokes an anomaly makes fit into it.
    shortest = ch.stroke_m / (max(ch.v_fwd, ch.v_back) * 1.4) + 0.7 * min(ch.dwell_fwd_s, ch.dwell_back_s)
    longest = (
        ch.stroke_m / (min(ch.v_fwd, ch.v_back) * 0.7)
        + ch.ramp_s
        + 1.3 * max(ch.dwell_fwd_s, ch.dwell_back_s)
    )
    n_max = math.ceil((duration + 3 * longest) / shortest) + 2
    clip_speed = 1.0 + 0.015 * rng.standard_normal()
    stroke_jitter = 1.0 + 0.008 * rng.standard_normal(n_max)
    dwell_jitter = np.exp(0.06 * rng.standard_normal(n_max))
    first_back = bool(rng.integers(0, 2))
    offset = rng.uniform()

    backward = (np.arange(n_max) + first_back) % 2 == 1
    sign = np.where(backward, -1.0, 1.0)
    v = np.where(backward, ch.v_back, ch.v_fwd) * clip_speed * stroke_jitter * speed_factor
    # A stepper can start and stop at once at its pull-in rate, so its ramps
    # run between that start speed and the cruise speed, not from zero.
    vs = ch.start_ratio * v
    ramp = np.minimum(ch.ramp_s, (ch.stroke_m / v - 0.05) / (1.0 + ch.start_ratio))
    cruise = (ch.stroke_m - (vs + v) * ramp) / v  # each ramp travels (vs + v) / 2 * ramp
    dwell = np.where(backward, ch.dwell_back_s, ch.dwell_fwd_s) * dwell_jitter
    length = 2 * ramp + cruise + dwell
    t0 = -offset * (length[0] + length[1])
    start = t0 + np.concatenate([[0.0], np.cumsum(length)[:-1]])

    edge = 1e-3
    bt = np.stack(
        [
            start,
            start + edge,
            start + ramp,
            start + ramp + cruise,
            start + 2 * ramp + cruise - edge,
            start + 2 * ramp + cruise,
        ],
        axis=1,
    )
    bv = np.stack([0 * v, vs, v, v, vs, 0 * v], axis=1) * sign[:, None]
    hold: tuple[float, float] | None = None
    if stall_rng is not None:
        inside = np.flatnonzero(
            (start + ramp > 0.1) & (start + ramp + cruise < duration - 0.6) & (cruise > 0.1)
        )
        if inside.size == 0:
            inside = np.flatnonzero(start + ramp + cruise > 0)[:1]
        j = int(stall_rng.choice(inside))
        stop = start[j] + ramp[j] + stall_rng.uniform(0.25, 0.75) * cruise[j]
        decel = 0.3 * ramp[j]
        hold = (stop + decel, stop + decel + _strength("stall_hold", stall_severity))
        # Stopping and restarting lose cruise distance: the carriage cruises
        # on for longer to reach its end stop, and later strokes start late.
        delay = decel / 2 + (hold[1] - hold[0]) + (1.0 - ch.start_ratio) * ramp[j] / 2 + edge
        bt[j, 3:] += delay
        bt[j + 1 :] += delay
        start[j + 1 :] += delay
        stall_t = np.array([stop, hold[0], hold[1], hold[1] + edge, hold[1] + edge + ramp[j]])
        stall_v = np.array([v[j], 0.0, 0.0, vs[j], v[j]]) * sign[j]
        bt = np.concatenate([bt[:j].ravel(), bt[j, :3], stall_t, bt[j, 3:], bt[j + 1 :].ravel()])
        bv = np.concatenate([bv[:j].ravel(), bv[j, :3], stall_v, bv[j, 3:], bv[j + 1 :].ravel()])

    hop = _control_hop(sr)
    # Integrate from before the first stroke's start so the position is exact.
    pre = math.ceil(-t0 * sr / hop)
    t = (np.arange(pre + n // hop + 2) - pre) * (hop / sr)
    velocity = np.interp(t, bt.ravel(), bv.ravel())
    # A jerk-limited controller rounds the trapezoid's corners (an S-curve).
    velocity = _boxcar(velocity, max(1, round(ch.jerk_s * sr / hop)))
    position = (ch.stroke_m if first_back else 0.0) + np.cumsum(velocity) * (hop / sr)
    holding = np.zeros(t.size)
    if hold is not None:
        holding[(t >= hold[0]) & (t < hold[1])] = 1.0
        holding = _boxcar(holding, max(1, round(0.01 * sr / hop)))
    starts = start * sr
    return _Motion(
        hop=hop,
        speed=np.abs(velocity[pre:]),
        accel=np.abs(np.gradient(velocity))[pre:] * (sr / hop),
        position=position[pre:],
        holding=holding[pre:],
        starts=starts[(starts >= 0) & (starts < n)],
        cruise_v=float(ch.v_fwd * clip_speed * speed_factor),
    )


@lru_cache(maxsize=32)
def _structure_response(machine_id: str, n: int, sr: int) -> np.ndarray:
    """Frequency response of the rail and carriage at the n-sample rfft bins, complex64.

    A direct path plus parallel resonant modes. Small stiff parts radiate
    poorly at low frequencies, so the direct path is high-passed: the motor's
    low step-rate harmonics are felt more than heard.
    """
    ch = _slider_character(machine_id)
    f = np.fft.rfftfreq(n, 1.0 / sr)
    b, a = signal.butter(2, ch.radiation_hz, btype="highpass", fs=sr)
    response = ch.direct_gain * signal.freqz(b, a, worN=f, fs=sr)[1]
    for f0, q, g in zip(ch.res_hz, ch.res_q, ch.res_gain):
        if f0 < 0.45 * sr:
            b, a = signal.iirpeak(f0, q, fs=sr)
            response += g * signal.freqz(b, a, worN=f, fs=sr)[1]
    response = response.astype(np.complex64)
    response.setflags(write=False)
    return response


def _structure(ch: _SliderCharacter, x: np.ndarray, sr: int) -> np.ndarray:
    """The excitation `x`, shape (n,), as heard through the rail and carriage; float32 (n,)."""
    # Filtered over the whole clip at once: the modes ring out within tens of
    # milliseconds, so the FFT's circular wrap is inaudible.
    spec = np.fft.rfft(x)
    spec *= _structure_response(ch.machine_id, x.size, sr)
    return np.fft.irfft(spec, x.size).astype(np.float32)


def _slider_machine(
    ch: _SliderCharacter, m: _Motion, rng: np.random.Generator, n: int, sr: int
) -> np.ndarray:
    """The machine's own sound for motion `m`, uncalibrated, float32, shape (n,)."""
    hop = m.hop
    u = m.speed / ch.v_fwd
    # Band-limit the step-rate series at this clip's top speed (no aliasing).
    top_rate = ch.steps_per_m * max(float(m.speed.max()), 1e-3)
    k = int(np.clip(0.45 * sr // top_rate, 1, ch.harmonic_amps.size))
    table = _wavetable(ch.harmonic_amps[:k], ch.harmonic_phases[:k])
    table *= np.float32(0.25 / math.sqrt(np.sum(ch.harmonic_amps[:k] ** 2) / 2))
    step_phase = _audio_phase(_phase(m.speed * ch.steps_per_m, hop, sr, rng.uniform()), hop, n)

    # Torque ripple grows with speed and with the extra torque of accelerating.
    accel_ref = ch.v_fwd / ch.ramp_s
    motor_env = np.sqrt(np.clip(u, 0.0, 2.0)) * (
        1.0 + ch.accel_boost * np.clip(m.accel / accel_ref, 0.0, 2.0)
    )
    # Rolling noise grows a little faster than speed and is never steady:
    # balls, grease and dust make it rough.
    rough = np.clip(1.0 + 0.35 * _smooth_noise(rng, u.size, max(1, round(0.02 * sr / hop))), 0.2, None)
    rolling_env = ch.rolling_gain * u * np.sqrt(np.sqrt(u)) * rough
    # The chopper drive whines faintly at idle current while the carriage
    # dwells; while stepping, the sinusoidal phase current modulates the
    # carrier, so sidebands spread from it as the step rate rises.
    moving = np.clip(u * 4.0, 0.0, 1.0)
    idle_env = (1.0 - moving) * (0.5 * _db(ch.idle_whine_db))
    chop_env = moving * _db(ch.chopper_db)

    b, a = _butter(1, ch.rolling_hp_hz, "highpass", sr)
    hiss = signal.lfilter(b, a, rng.standard_normal(n, dtype=np.float32))
    excitation = _oscillator(table, step_phase) * _upsample(motor_env, hop, n)
    excitation += hiss * _upsample(rolling_env, hop, n)
    machine = _structure(ch, excitation, sr)
    if ch.whine_hz < 0.4 * sr:
        whine = _oscillator(_SINE, _tone_phase(ch.whine_hz, n, sr, rng.uniform()))
        current = _upsample(idle_env, hop, n) + _oscillator(_SINE, step_phase) * _upsample(chop_env, hop, n)
        machine += whine * current
    return machine


@lru_cache(maxsize=32)
def _background_shape(machine_id: str, n: int, sr: int) -> np.ndarray:
    """Amplitude spectrum of the ID's factory noise at the n-sample rfft bins, float32, unit RMS."""
    ch = _slider_character(machine_id)
    f = np.fft.rfftfreq(n, 1.0 / sr)
    # Big slow machinery gives a brown low end, air handling a pinkish middle
    # and a fan or compressor somewhere in the hall a broad bump.
    power = ch.bg_brown / (1.0 + (f / ch.bg_brown_hz) ** 2) + ch.bg_pink / (1.0 + f / ch.bg_pink_hz) + 2e-4
    power *= 1.0 + 0.02 * ch.bg_bump_gain * np.exp(-0.5 * (np.log((f + 1.0) / ch.bg_bump_hz) / 0.35) ** 2)
    power /= 1.0 + (f / (0.45 * sr)) ** 8
    power[0] = 0.0
    # Other machines hum at their own steady frequencies: a narrow spectral
    # line of noise is such a tone with a slowly wandering amplitude.
    broadband = power.sum()
    for f0, level_db in zip(ch.bg_tone_hz, ch.bg_tone_db):
        line = np.exp(-0.5 * ((f - f0) / 1.5) ** 2)
        power += line * (broadband * 10 ** (level_db / 10) / (line.sum() or 1.0))
    # irfft of unit complex Gaussian bins scaled by this has unit variance.
    shape = np.sqrt(power * (n**2 / (2 * power.sum()))).astype(np.float32)
    shape.setflags(write=False)
    return shape


def _background(ch: _SliderCharacter, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Factory noise, float32, shape (n,), unit RMS before the impacts."""
    shape = _background_shape(ch.machine_id, n, sr)
    # White Gaussian noise drawn directly as its spectrum saves an FFT.
    re_im = rng.standard_normal((2, shape.size), dtype=np.float32)
    spec = (re_im[0] + 1j * re_im[1]).astype(np.complex64)
    spec *= shape * np.float32(math.sqrt(0.5))
    noise = np.fft.irfft(spec, n).astype(np.float32)

    n_harm = max(1, min(ch.hum_amps.size, int(0.45 * sr / ch.hum_hz)))
    table = _wavetable(ch.hum_amps[:n_harm], rng.uniform(0, 2 * np.pi, n_harm))
    table *= np.float32(_db(ch.hum_db) / math.sqrt(np.sum(ch.hum_amps[:n_harm] ** 2) / 2))
    bg = noise + _oscillator(table, _tone_phase(ch.hum_hz, n, sr, rng.uniform()))
    bg *= np.float32(1.0 / math.sqrt(1.0 + _db(ch.hum_db) ** 2))

    # Distant impacts: dull, decaying thuds at random times.
    for _ in range(int(rng.poisson(ch.impact_rate * n / sr))):
        tau = rng.uniform(0.02, 0.09)
        length = min(n, int(5 * tau * sr))
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / (tau * sr))
        # Two one-pole low-passes: distance and walls swallow the highs.
        pole = math.exp(-2 * math.pi * rng.uniform(250.0, 1500.0) / sr)
        burst = signal.lfilter([(1 - pole) ** 2], [1.0, -2 * pole, pole * pole], burst)
        burst *= rng.lognormal(math.log(3.0), 0.5) / (np.max(np.abs(burst)) or 1.0)
        at = int(rng.integers(0, n))
        end = min(n, at + length)
        bg[at:end] += burst[: end - at].astype(np.float32)
    return bg


def _dent(
    ch: _SliderCharacter, m: _Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # The dent sits at one place on the rail: each of the carriage's two
    # bearing blocks drops into it on every pass, both ways, harder the
    # faster the carriage moves.
    where = rng.uniform(0.15, 0.85) * ch.stroke_m
    spacing = rng.uniform(0.03, 0.08)
    at = []
    for offset in (-spacing / 2, spacing / 2):
        p = m.position + offset
        j = np.flatnonzero((p[:-1] > where) != (p[1:] > where))
        at.append((j + (where - p[j]) / (p[j + 1] - p[j])) * m.hop)
    at = np.concatenate(at)
    speed = np.interp(at / m.hop, np.arange(m.speed.size), m.speed)
    # The impact rings the stiff roller and its axle: high modes of their own.
    freqs = np.exp(rng.uniform(math.log(2500.0), math.log(min(7500.0, 0.46 * sr)), 3))
    kernel = _ringing(sr, freqs, rng.uniform(0.01, 0.03, 3), rng.uniform(0.5, 1.0, 3), 0.12)
    kernel[:8] += rng.uniform(-1.0, 1.0, 8)
    amp = speed / ch.v_fwd * rng.uniform(0.8, 1.2, at.size) * _db(_strength("dent", s))
    return machine + _place_events(machine.size, at, amp, kernel)


_SQUEAL_TABLE = _wavetable(np.array([1.0, 0.3]), np.array([0.0, 1.0]))


def _squeal(
    ch: _SliderCharacter, m: _Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # Stick-slip excites a local mode of a wiper seal or guide; its pitch
    # wobbles with the contact load and the tone comes and goes while sliding.
    n, hop = machine.size, m.hop
    f0 = math.exp(rng.uniform(math.log(1500.0), math.log(min(6500.0, 0.4 * sr))))
    t_c = np.arange(m.speed.size) * (hop / sr)
    wobble = 1.0 + 0.004 * np.sin(2 * np.pi * rng.uniform(3.0, 8.0) * t_c + rng.uniform(0, 2 * np.pi))
    wobble += 0.002 * _smooth_noise(rng, t_c.size, max(1, round(0.05 * sr / hop)))
    phase = _audio_phase(_phase(f0 * wobble, hop, sr, rng.uniform()), hop, n)
    sliding = np.clip((m.speed / ch.v_fwd - 0.2) * 3.0, 0.0, 1.0)
    sticking = np.clip(0.6 + 0.8 * _smooth_noise(rng, t_c.size, max(1, round(0.15 * sr / hop))), 0.0, 1.0)
    env = _upsample(sliding * sticking * _db(_strength("squeal", s)), hop, n)
    return machine + _oscillator(_SQUEAL_TABLE, phase) * env


def _loose_belt(
    ch: _SliderCharacter, m: _Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    n, hop = machine.size, m.hop
    slap_phase = _phase(m.speed * ch.belt_slaps_per_m, hop, sr, rng.uniform())
    # The slack span beats against the pulley once per slap: the transmitted
    # sound flutters (cos**8 has mean 35/128, so the level stays the same)...
    moving = np.clip(m.speed / ch.v_fwd * 3.0, 0.0, 1.0)
    flutter = 1.0 + _strength("loose_belt_flutter", s) * moving * (
        np.cos(2 * np.pi * slap_phase) ** 8 - 35 / 128
    )
    # ...and each slap, and the slack taken up at each start, rattles low.
    at = _crossings(slap_phase, hop)
    speed = np.interp(at / hop, np.arange(m.speed.size), m.speed)
    amp = np.concatenate([speed / ch.v_fwd * rng.uniform(0.6, 1.2, at.size), np.full(m.starts.size, 1.5)])
    at = np.concatenate([at, m.starts])
    kernel = _ringing(sr, [ch.belt_rattle_hz, 2.3 * ch.belt_rattle_hz], [0.03, 0.012], [1.0, 0.4], 0.15)
    rattle = _place_events(n, at, amp * _db(_strength("loose_belt", s)), kernel)
    return machine * _upsample(flutter, hop, n) + rattle


def _stall(
    ch: _SliderCharacter, m: _Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # Energised but not turning: the chopper whines at full current and the
    # rotor, pulled to and fro by the commanded steps, buzzes.
    n, hop = machine.size, m.hop
    whine_hz = ch.whine_hz if ch.whine_hz < 0.4 * sr else 0.25 * sr
    whine = _oscillator(_SINE, _tone_phase(whine_hz, n, sr, rng.uniform()))
    buzz_table = _wavetable(np.array([1.0, 0.5, 0.25]), rng.uniform(0, 2 * np.pi, 3))
    buzz = _oscillator(buzz_table, _tone_phase(0.5 * ch.steps_per_m * m.cruise_v, n, sr, rng.uniform()))
    held = _upsample(m.holding, hop, n) * np.float32(_db(_strength("stall", s)))
    return machine + (whine + buzz) * held


def _bearing(
    ch: _SliderCharacter, m: _Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # A spalled race: every roller passing the spall strikes it, at a rate
    # proportional to speed with a little slip, ringing a stiff high mode.
    hop = m.hop
    slip = 1.0 + 0.01 * _smooth_noise(rng, m.speed.size, max(1, round(0.05 * sr / hop)))
    at = _crossings(_phase(m.speed * ch.race_hits_per_m * slip, hop, sr, rng.uniform()), hop)
    speed = np.interp(at / hop, np.arange(m.speed.size), m.speed)
    amp = (speed / ch.v_fwd) ** 1.5 * rng.lognormal(0.0, 0.2, at.size) * _db(_strength("bearing", s))
    f_ring = rng.uniform(min(3500.0, 0.4 * sr), min(7000.0, 0.44 * sr))
    kernel = _ringing(sr, [f_ring, f_ring * 1.37], [0.003, 0.002], [1.0, 0.6], 0.02)
    return machine + _place_events(machine.size, at, amp, kernel)


# Anomalies added to the calibrated machine sound; `speed` and `stall` change
# the kinematics instead (and `stall` also adds its whine here).
_SLIDER_ANOMALIES: dict[str, Callable[..., np.ndarray]] = {
    "dent": _dent,
    "squeal": _squeal,
    "loose_belt": _loose_belt,
    "stall": _stall,
    "bearing": _bearing,
}


class _SliderModel:
    anomaly_kinds = ANOMALY_KINDS

    @staticmethod
    @lru_cache(maxsize=128)
    def calibration(machine_id: str, sample_rate: int) -> float:
        """RMS of a nominal normal render of the ID's machine sound: the ID's 0 dB."""
        ch = _slider_character(machine_id)
        seq = np.random.SeedSequence([0xCA1B, int(machine_id)])
        n = round(_CALIBRATION_SECONDS * sample_rate)
        motion = _slider_motion(ch, _child(seq, 0), n=n, sr=sample_rate)
        return _rms(_slider_machine(ch, motion, _child(seq, 1), n, sample_rate)) or 1.0

    def render(
        self,
        machine_id: str,
        *,
        anomaly: str | None,
        seq: np.random.SeedSequence,
        duration: float,
        sample_rate: int,
        snr_db: float | None,
    ) -> _Rendered:
        ch = _slider_character(machine_id)
        sr = sample_rate
        n = round(duration * sr)
        # Separate streams: the anomaly's draws leave the normal parts alone,
        # so a seed's anomalous clip is its normal clip plus the fault.
        arng = _child(seq, 3)
        severity = float(arng.uniform()) if anomaly is not None else 0.0
        speed_factor = 1.0
        if anomaly == "speed":
            speed_factor += _strength("speed", severity) * (1.0 if arng.uniform() < 0.5 else -1.0)
        motion = _slider_motion(
            ch,
            _child(seq, 0),
            n=n,
            sr=sr,
            speed_factor=speed_factor,
            stall_rng=arng if anomaly == "stall" else None,
            stall_severity=severity,
        )
        machine = _slider_machine(ch, motion, _child(seq, 1), n, sr)
        machine *= np.float32(1.0 / self.calibration(machine_id, sr))
        if anomaly in _SLIDER_ANOMALIES:
            machine = _SLIDER_ANOMALIES[anomaly](ch, motion, machine, arng, severity, sr)

        snr = ch.snr_db if snr_db is None else float(snr_db)
        background = _background(ch, _child(seq, 2), n, sr)
        mix = machine + background * np.float32(_db(-snr))
        # One gain per ID and SNR (and a little placement jitter), not per
        # clip: a louder anomaly stays louder.
        gain = _TARGET_RMS * _db(ch.loudness_db) / math.sqrt(1.0 + _db(-snr) ** 2)
        gain *= _db(0.3 * _child(seq, 4).standard_normal())
        audio = np.clip(mix * np.float32(gain), -1.0, 1.0).astype(np.float32)
        return _Rendered(audio=audio, severity=severity)


_MACHINES: dict[str, _MachineModel] = {"slider": _SliderModel()}


def _model(machine_type: object) -> _MachineModel:
    if not isinstance(machine_type, str) or machine_type not in _MACHINES:
        raise ValueError(f"unknown machine_type {machine_type!r}; supported: {', '.join(sorted(_MACHINES))}")
    return _MACHINES[machine_type]


def _check_id(machine_id: object) -> str:
    if not isinstance(machine_id, str) or not re.fullmatch(r"[0-9]{2}", machine_id):
        raise ValueError(f"machine_id must be two digits such as '00' or '06', got {machine_id!r}")
    return machine_id


def _check_anomaly(model: _MachineModel, machine_type: str, anomaly: object) -> None:
    if anomaly is not None and anomaly not in model.anomaly_kinds:
        supported = ", ".join(model.anomaly_kinds)
        raise ValueError(f"unknown anomaly kind {anomaly!r} for {machine_type}; supported: {supported}")


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_audio_args(duration: object, sample_rate: object, snr_db: object) -> None:
    if not (isinstance(duration, numbers.Real) and math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    if not _is_int(sample_rate) or sample_rate < 8000:
        raise ValueError(f"sample_rate must be an integer of at least 8000 Hz, got {sample_rate!r}")
    if round(duration * sample_rate) < 64:
        raise ValueError(f"duration {duration} s is too short at {sample_rate} Hz")
    if snr_db is not None and not (isinstance(snr_db, numbers.Real) and math.isfinite(snr_db)):
        raise ValueError(f"snr_db must be a finite number of dB or None, got {snr_db!r}")


def _seed_sequence(seed: object) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if _is_int(seed) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise ValueError(f"seed must be a non-negative int or a numpy SeedSequence, got {seed!r}")


def _render(
    machine_type: str,
    machine_id: str,
    *,
    anomaly: str | None,
    seed: int | np.random.SeedSequence,
    duration: float,
    sample_rate: int,
    snr_db: float | None,
) -> _Rendered:
    model = _model(machine_type)
    _check_id(machine_id)
    _check_anomaly(model, machine_type, anomaly)
    _check_audio_args(duration, sample_rate, snr_db)
    return model.render(
        machine_id,
        anomaly=anomaly,
        seq=_seed_sequence(seed),
        duration=float(duration),
        sample_rate=int(sample_rate),
        snr_db=None if snr_db is None else float(snr_db),
    )


def render_clip(
    machine_type: str,
    machine_id: str,
    *,
    anomaly: str | None,
    seed: int | np.random.SeedSequence,
    duration: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    snr_db: float | None = None,
) -> np.ndarray:
    """One mono clip, float32 in [-1, 1], shape (round(duration * sample_rate),).

    `anomaly=None` renders a normal clip, otherwise one of the machine type's
    anomaly kinds (`ANOMALY_KINDS` for the slider) at a severity drawn from
    the seed. A seed's anomalous clip is its normal clip plus the fault: same
    carriage timing and noises (for ``speed`` and ``stall`` the timing is the
    fault). `snr_db` is the ratio of the ID's nominal machine level to the
    background; None takes the ID's own (3-9 dB). Raises ValueError for an
    unknown machine type or anomaly kind, an ID that is not two digits, or
    out-of-range numbers.
    """
    return _render(
        machine_type,
        machine_id,
        anomaly=anomaly,
        seed=seed,
        duration=duration,
        sample_rate=sample_rate,
        snr_db=snr_db,
    ).audio


def _clip_seed(seed: int, machine_id: str, split: str, index: int) -> np.random.SeedSequence:
    # One stream per clip: train clips do not depend on how many test clips
    # are asked for, nor on the other IDs.
    return np.random.SeedSequence([int(seed), int(machine_id), _SPLITS[split], int(index)])


def generate_dataset(
    out: str | os.PathLike,
    *,
    machine_type: str = "slider",
    ids: Sequence[str] = ("00", "02", "04", "06"),
    n_train: int = 300,
    n_test_normal: int = 100,
    n_test_anomaly: int = 100,
    seed: int = 0,
    duration: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    snr_db: float = 6.0,
    anomaly_kinds: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Writes a synthetic data set in the DCASE 2020 Task 2 layout and returns what it wrote.

        OUT/<machine_type>/train/normal_id_XX_NNNNNNNN.wav   n_train per ID
        OUT/<machine_type>/test/normal_id_XX_NNNNNNNN.wav    n_test_normal per ID
        OUT/<machine_type>/test/anomaly_id_XX_NNNNNNNN.wav   n_test_anomaly per ID
        OUT/<machine_type>/test/anomaly_kinds.csv            file,machine_id,kind,severity

    Each file is mono PCM_16 WAV at `sample_rate`, `duration` seconds long;
    NNNNNNNN counts from 0 per ID and split. Anomalous clips cycle through
    `anomaly_kinds` (all of the machine type's by default) in order, so the
    kinds are as even as the count allows. Each clip has its own random
    stream from (seed, ID, split, index): the same arguments give
    byte-identical files, and a clip does not depend on the counts asked for.
    `progress(done, total)` is called after each file written.
    """
    model = _model(machine_type)
    if isinstance(ids, str):  # a str is a Sequence[str] of characters
        raise ValueError(  # noqa: TRY004 - the API promises ValueError for every bad argument
            f"ids must be a sequence of two-digit IDs such as ('00', '02'), not the string {ids!r}"
        )
    ids = tuple(_check_id(i) for i in ids)
    if not ids or len(set(ids)) != len(ids):
        raise ValueError(f"ids must name at least one machine ID, each once, got {ids}")
    kinds = tuple(model.anomaly_kinds if anomaly_kinds is None else anomaly_kinds)
    for kind in kinds:
        _check_anomaly(model, machine_type, kind)
    if not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"anomaly_kinds must name at least one kind, each once, got {kinds}")
    for name, count in (
        ("n_train", n_train),
        ("n_test_normal", n_test_normal),
        ("n_test_anomaly", n_test_anomaly),
    ):
        if not _is_int(count) or count < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {count!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if snr_db is None:
        raise ValueError("snr_db must be a finite number of dB")
    _check_audio_args(duration, sample_rate, snr_db)

    root = Path(out) / machine_type
    train_dir, test_dir = root / "train", root / "test"
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[Path, str, str, int, str | None]] = []
    for mid in ids:
        jobs += [
            (train_dir / f"normal_id_{mid}_{i:08d}.wav", mid, "train_normal", i, None) for i in range(n_train)
        ]
        jobs += [
            (test_dir / f"normal_id_{mid}_{i:08d}.wav", mid, "test_normal", i, None)
            for i in range(n_test_normal)
        ]
        jobs += [
            (test_dir / f"anomaly_id_{mid}_{i:08d}.wav", mid, "test_anomaly", i, kinds[i % len(kinds)])
            for i in range(n_test_anomaly)
        ]

    rows: list[tuple[str, str, str, str]] = []
    kind_counts = dict.fromkeys(kinds, 0)
    samples = 0
    for done, (path, mid, split, index, kind) in enumerate(jobs, start=1):
        clip = model.render(
            mid,
            anomaly=kind,
            seq=_clip_seed(seed, mid, split, index),
            duration=float(duration),
            sample_rate=int(sample_rate),
            snr_db=float(snr_db),
        )
        sf.write(path, clip.audio, int(sample_rate), subtype="PCM_16", format="WAV")
        samples += clip.audio.size
        if kind is not None:
            rows.append((path.name, mid, kind, f"{clip.severity:.4f}"))
            kind_counts[kind] += 1
        if progress is not None:
            progress(done, len(jobs))

    with open(test_dir / ANOMALY_KINDS_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("file", "machine_id", "kind", "severity"))
        writer.writerows(rows)

    return SynthSummary(
        root=root,
        machine_type=machine_type,
        ids=ids,
        n_train=n_train * len(ids),
        n_test_normal=n_test_normal * len(ids),
        n_test_anomaly=n_test_anomaly * len(ids),
        kind_counts=kind_counts,
        seconds=samples / sample_rate,
    )

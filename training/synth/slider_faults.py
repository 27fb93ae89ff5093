"""The slide rail's faults, each added to the calibrated machine sound of one clip.

Every fault function takes (character, motion, machine sound (n,), the
fault's generator, severity in [0, 1], sample rate) and returns the faulty
sound, float32, shape (n,). ``speed`` has none: it only changes the
kinematics (`slider_motion.py`); ``stall`` changes them and adds its whine here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .dsp import (
    SINE,
    audio_phase,
    crossings,
    db,
    oscillator,
    phase,
    place_events,
    ringing,
    smooth_noise,
    tone_phase,
    upsample,
    wavetable,
)
from .slider_motion import Motion, SliderCharacter, fault_strength


def _dent(
    ch: SliderCharacter, m: Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # The dent sits at one place on the rail: each of the carriage's two
    # bearing blocks drops into it on every pass, both ways, harder the
    # faster the carriage moves.
    where = rng.uniform(0.15, 0.85) * ch.stroke_m
    spacing = rng.uniform(0.03, 0.08)
    per_block: list[np.ndarray] = []
    for offset in (-spacing / 2, spacing / 2):
        p = m.position + offset
        j = np.flatnonzero((p[:-1] > where) != (p[1:] > where))
        per_block.append((j + (where - p[j]) / (p[j + 1] - p[j])) * m.hop)
    at = np.concatenate(per_block)
    speed = np.interp(at / m.hop, np.arange(m.speed.size), m.speed)
    # The impact rings the stiff roller and its axle: high modes of their own.
    freqs = np.exp(rng.uniform(math.log(2500.0), math.log(min(7500.0, 0.46 * sr)), 3))
    kernel = ringing(sr, freqs, rng.uniform(0.01, 0.03, 3), rng.uniform(0.5, 1.0, 3), 0.12)
    kernel[:8] += rng.uniform(-1.0, 1.0, 8)
    amp = speed / ch.v_fwd * rng.uniform(0.8, 1.2, at.size) * db(fault_strength("dent", s))
    struck: np.ndarray = machine + place_events(machine.size, at, amp, kernel)
    return struck


_SQUEAL_TABLE = wavetable(np.array([1.0, 0.3]), np.array([0.0, 1.0]))


def _squeal(
    ch: SliderCharacter, m: Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # Stick-slip excites a local mode of a wiper seal or guide; its pitch
    # wobbles with the contact load and the tone comes and goes while sliding.
    n, hop = machine.size, m.hop
    f0 = math.exp(rng.uniform(math.log(1500.0), math.log(min(6500.0, 0.4 * sr))))
    t_c = np.arange(m.speed.size) * (hop / sr)
    wobble = 1.0 + 0.004 * np.sin(2 * np.pi * rng.uniform(3.0, 8.0) * t_c + rng.uniform(0, 2 * np.pi))
    wobble += 0.002 * smooth_noise(rng, t_c.size, max(1, round(0.05 * sr / hop)))
    tone = audio_phase(phase(f0 * wobble, hop, sr, rng.uniform()), hop, n)
    sliding = np.clip((m.speed / ch.v_fwd - 0.2) * 3.0, 0.0, 1.0)
    sticking = np.clip(0.6 + 0.8 * smooth_noise(rng, t_c.size, max(1, round(0.15 * sr / hop))), 0.0, 1.0)
    env = upsample(sliding * sticking * db(fault_strength("squeal", s)), hop, n)
    squealing: np.ndarray = machine + oscillator(_SQUEAL_TABLE, tone) * env
    return squealing


def _loose_belt(
    ch: SliderCharacter, m: Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    n, hop = machine.size, m.hop
    slap_phase = phase(m.speed * ch.belt_slaps_per_m, hop, sr, rng.uniform())
    # The slack span beats against the pulley once per slap: the transmitted
    # sound flutters (cos**8 has mean 35/128, so the level stays the same)...
    moving = np.clip(m.speed / ch.v_fwd * 3.0, 0.0, 1.0)
    flutter = 1.0 + fault_strength("loose_belt_flutter", s) * moving * (
        np.cos(2 * np.pi * slap_phase) ** 8 - 35 / 128
    )
    # ...and each slap, and the slack taken up at each start, rattles low.
    at = crossings(slap_phase, hop)
    speed = np.interp(at / hop, np.arange(m.speed.size), m.speed)
    amp = np.concatenate([speed / ch.v_fwd * rng.uniform(0.6, 1.2, at.size), np.full(m.starts.size, 1.5)])
    at = np.concatenate([at, m.starts])
    kernel = ringing(sr, [ch.belt_rattle_hz, 2.3 * ch.belt_rattle_hz], [0.03, 0.012], [1.0, 0.4], 0.15)
    rattle = place_events(n, at, amp * db(fault_strength("loose_belt", s)), kernel)
    slapping: np.ndarray = machine * upsample(flutter, hop, n) + rattle
    return slapping


def _stall(
    ch: SliderCharacter, m: Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # Energised but not turning: the chopper whines at full current and the
    # rotor, pulled to and fro by the commanded steps, buzzes.
    n, hop = machine.size, m.hop
    whine_hz = ch.whine_hz if ch.whine_hz < 0.4 * sr else 0.25 * sr
    whine = oscillator(SINE, tone_phase(whine_hz, n, sr, rng.uniform()))
    buzz_table = wavetable(np.array([1.0, 0.5, 0.25]), rng.uniform(0, 2 * np.pi, 3))
    buzz = oscillator(buzz_table, tone_phase(0.5 * ch.steps_per_m * m.cruise_v, n, sr, rng.uniform()))
    held = upsample(m.holding, hop, n) * np.float32(db(fault_strength("stall", s)))
    stalled: np.ndarray = machine + (whine + buzz) * held
    return stalled


def _bearing(
    ch: SliderCharacter, m: Motion, machine: np.ndarray, rng: np.random.Generator, s: float, sr: int
) -> np.ndarray:
    # A spalled race: every roller passing the spall strikes it, at a rate
    # proportional to speed with a little slip, ringing a stiff high mode.
    hop = m.hop
    slip = 1.0 + 0.01 * smooth_noise(rng, m.speed.size, max(1, round(0.05 * sr / hop)))
    at = crossings(phase(m.speed * ch.race_hits_per_m * slip, hop, sr, rng.uniform()), hop)
    speed = np.interp(at / hop, np.arange(m.speed.size), m.speed)
    amp = (speed / ch.v_fwd) ** 1.5 * rng.lognormal(0.0, 0.2, at.size) * db(fault_strength("bearing", s))
    f_ring = rng.uniform(min(3500.0, 0.4 * sr), min(7000.0, 0.44 * sr))
    kernel = ringing(sr, [f_ring, f_ring * 1.37], [0.003, 0.002], [1.0, 0.6], 0.02)
    struck: np.ndarray = machine + place_events(machine.size, at, amp, kernel)
    return struck


FAULTS: dict[str, Callable[..., np.ndarray]] = {
    "dent": _dent,
    "squeal": _squeal,
    "loose_belt": _loose_belt,
    "stall": _stall,
    "bearing": _bearing,
}

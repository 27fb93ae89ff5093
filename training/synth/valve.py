"""The solenoid valve: an intermittent sound of actuations and rests (MIMII's valves).

A clip of one hears cycles of one to three openings (pulses) and a rest of
varying length. Each opening and each closing is a sharp click, the plunger
striking its stop, that rings the valve body's modes and thumps lower; while
the valve is open, the flow hisses through it (rising and falling within some
milliseconds) and an AC solenoid buzzes at twice the mains frequency. Every
ID draws its pulse pattern, open time and rests with their spread, the modes
of both clicks, the hiss band and level, the buzz and loudness.

Faults (`VALVE_KINDS`), severity s in [0, 1] scaling `STRENGTH`:

* ``leak``: the closed seat lets the flow through: a faint hiss in the rests;
* ``sticking``: the plunger sticks: some actuations come late, some double
  (a weak first click, the full one later) and some openings are missed;
* ``contamination``: dirt in the seat and the armature tube: the clicks are
  duller and lower (damped, shifted modes, a gritty crunch) and particles
  rattle while the valve is open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .dsp import (
    boxcar,
    control_hop,
    db,
    log_bump,
    noise32,
    ringing,
    scatter_events,
    smooth_noise,
    unit_shape,
    upsample,
)
from .family import SourceFamily, fault_rng, id_rng, strength
from .rotor import motor_hum

VALVE_KINDS: tuple[str, ...] = ("leak", "sticking", "contamination")

# (severity 0, severity 1). Levels in dB: the leak against the open valve's
# hiss, the rattle against a click's peak.
STRENGTH: dict[str, tuple[float, float]] = {
    "leak": (-26.0, -12.0),  # hiss in the rests, dB
    "sticking": (0.3, 0.85),  # share of actuations that go wrong
    "contamination_shift": (0.005, 0.025),  # relative lowering of the click modes
    "contamination_damping": (0.1, 0.4),  # relative shortening of their decays
    "contamination_rattle": (-44.0, -32.0),  # particle rattle peak, dB
}
_KERNEL_S = 0.12


@dataclass(frozen=True, eq=False)
class ValveCharacter:
    """One valve's constants, all drawn from its ID."""

    machine_id: str
    pulses: int  # openings per cycle
    gap_s: float  # closed time between the pulses of a cycle
    open_s: float
    open_spread: float  # lognormal sigma
    rest_s: float
    rest_spread: float
    mode_hz: np.ndarray  # the valve body's modes
    mode_decay_s: np.ndarray
    open_gains: np.ndarray
    close_gains: np.ndarray
    thump_hz: float
    thump_decay_s: float
    close_db: float  # closing click against the opening one
    hiss_hz: float
    hiss_width: float  # octaves
    hiss_db: float  # against a click's peak
    ramp_s: float  # hiss rise and fall
    buzz_hz: float  # 0: a DC solenoid, silent
    buzz_amps: np.ndarray
    buzz_db: float
    leak_hz: float
    loudness_db: float


@lru_cache(maxsize=128)
def valve_character(machine_id: str) -> ValveCharacter:
    """The constants of valve `machine_id`, the same in every process."""
    rng = id_rng("valve", machine_id)
    n_modes = 4
    hiss_hz = math.exp(rng.uniform(math.log(800.0), math.log(5000.0)))
    ac = rng.uniform() < 0.5
    return ValveCharacter(
        machine_id=machine_id,
        pulses=int(rng.integers(1, 4)),
        gap_s=rng.uniform(0.05, 0.25),
        open_s=rng.uniform(0.06, 0.6),
        open_spread=rng.uniform(0.03, 0.15),
        rest_s=rng.uniform(0.25, 1.8),
        rest_spread=rng.uniform(0.1, 0.5),
        mode_hz=np.sort(np.exp(rng.uniform(math.log(800.0), math.log(7000.0), n_modes))),
        mode_decay_s=rng.uniform(0.003, 0.03, n_modes),
        open_gains=rng.uniform(0.3, 1.0, n_modes),
        close_gains=rng.uniform(0.3, 1.0, n_modes),
        thump_hz=rng.uniform(150.0, 500.0),
        thump_decay_s=rng.uniform(0.01, 0.04),
        close_db=rng.uniform(-2.0, 6.0),
        hiss_hz=hiss_hz,
        hiss_width=rng.uniform(0.5, 1.2),
        hiss_db=rng.uniform(-30.0, -16.0),
        ramp_s=rng.uniform(0.005, 0.03),
        buzz_hz=2 * float(rng.choice([50.0, 60.0])) if ac else 0.0,
        buzz_amps=rng.lognormal(0.0, 0.5, 6) * np.arange(1, 7) ** -0.7,
        buzz_db=rng.uniform(-42.0, -30.0),
        leak_hz=hiss_hz * rng.uniform(1.2, 2.0),
        loudness_db=rng.uniform(-3.0, 3.0),
    )


@lru_cache(maxsize=32)
def _shapes(ch: ValveCharacter, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude spectra of unit RMS: the open valve's hiss, a leak's."""
    f = np.fft.rfftfreq(n, 1.0 / sr)
    hiss = unit_shape(log_bump(f, min(ch.hiss_hz, 0.4 * sr), ch.hiss_width / 2) + 1e-6, n)
    leak = unit_shape(log_bump(f, min(ch.leak_hz, 0.4 * sr), 0.4) + 1e-6, n)
    for x in (hiss, leak):
        x.setflags(write=False)
    return hiss, leak


def _click(
    ch: ValveCharacter, gains: np.ndarray, jitter: np.ndarray, sr: int, *, shift: float, damping: float
) -> np.ndarray:
    """A click's kernel, float64, peak 1: the body's modes, the low thump and the first sharp contact.

    `jitter` (shape (3, modes + 1), standard normal) is the clip's: temperature, pressure and wear move
    the modes a little from clip to clip.
    """
    decays = np.append(ch.mode_decay_s, ch.thump_decay_s) * np.exp(0.1 * jitter[0]) * (1.0 - damping)
    freqs = np.append(ch.mode_hz, ch.thump_hz) * (1.0 + 0.015 * jitter[1]) * (1.0 - shift)
    weights = np.append(gains, 0.8) * np.exp(0.15 * jitter[2])
    kernel = ringing(sr, freqs, decays, weights, _KERNEL_S)
    kernel[: max(1, sr // 4000)] += 0.8  # the contact itself: a few samples of broadband impact
    peaked: np.ndarray = kernel / np.max(np.abs(kernel))
    return peaked


def _schedule(ch: ValveCharacter, rng: np.random.Generator, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Opening and closing times in seconds (shape (m,) each, opens[i] < closes[i]), covering the clip."""
    # A fixed number of draws, enough for the shortest cycles: a clip's timing
    # must not depend on what a fault does to it.
    cycle_min = ch.pulses * (0.5 * ch.open_s + ch.gap_s) + 0.3 * ch.rest_s
    n_cycles = math.ceil((duration + 2 * cycle_min) / cycle_min) + 2
    opens_s = ch.open_s * rng.lognormal(0.0, ch.open_spread, (n_cycles, ch.pulses))
    gaps = ch.gap_s * rng.lognormal(0.0, 0.1, (n_cycles, ch.pulses))
    gaps[:, -1] = ch.rest_s * rng.lognormal(0.0, ch.rest_spread, n_cycles)
    lengths = (opens_s + gaps).ravel()
    starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    starts -= rng.uniform() * (lengths[: ch.pulses].sum() + ch.rest_s)
    return starts, starts + opens_s.ravel()


def _gate(opens: np.ndarray, closes: np.ndarray, size: int, hop: int, sr: int, ramp_s: float) -> np.ndarray:
    """1 while open, 0 while closed, with rounded edges; control rate, shape (size,)."""
    t = np.arange(size) * (hop / sr)
    state = np.searchsorted(np.sort(opens), t, "right") - np.searchsorted(np.sort(closes), t, "right")
    return boxcar((state > 0).astype(np.float64), max(1, round(ramp_s * sr / hop)))


def _stick(
    opens: np.ndarray, closes: np.ndarray, rng: np.random.Generator, share: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sticking actuations: opens, closes, the weak first clicks (opening, closing) and the kept openings."""
    m = opens.size
    kind = rng.choice(3, size=(2, m))  # 0 late, 1 double, 2 missed
    wrong = rng.uniform(size=(2, m)) < share
    late = rng.uniform(0.01, 0.06, (2, m))
    opens, closes = opens.copy(), closes.copy()
    # A late or double opening starts the flow late; a late closing ends it late.
    shifted = wrong & (kind < 2)
    opens[shifted[0]] += late[0][shifted[0]]
    closes[shifted[1]] += late[1][shifted[1]]
    opens = np.minimum(opens, closes - 0.005)
    weak_open = (opens - late[0])[wrong[0] & (kind[0] == 1)]
    weak_close = (closes - late[1])[wrong[1] & (kind[1] == 1)]
    kept = ~(wrong[0] & (kind[0] == 2))
    return opens, closes, weak_open, weak_close, kept


def valve_sound(
    ch: ValveCharacter,
    *,
    rng: np.random.Generator,
    n: int,
    sr: int,
    anomaly: str | None,
    severity: float,
    arng: np.random.Generator | None,
    scale: float,
) -> np.ndarray:
    """One clip of the valve's own sound, float32, shape (n,): the normal sound times `scale`, and a fault."""
    s = severity
    hop = control_hop(sr)
    size = n // hop + 2
    opens, closes = _schedule(ch, rng, n / sr)
    amps = rng.lognormal(0.0, 0.1, (2, opens.size))
    flutter = 1.0 + 0.08 * smooth_noise(rng, size, max(1, round(0.05 * sr / hop)))
    hiss_shape, leak_shape = _shapes(ch, n, sr)
    hiss = noise32(rng, hiss_shape, n)
    buzz = motor_hum(ch.buzz_hz, ch.buzz_amps, ch.buzz_db, rng, n, sr) if ch.buzz_hz else None
    jitter = rng.standard_normal((2, 3, ch.mode_hz.size + 1))

    weak: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))
    kept = np.ones(opens.size, dtype=bool)
    shift = damping = 0.0
    if anomaly == "sticking":
        opens, closes, weak_open, weak_close, kept = _stick(
            opens, closes, fault_rng(arng), strength(STRENGTH, "sticking", s)
        )
        weak = (weak_open, weak_close)
    elif anomaly == "contamination":
        shift = strength(STRENGTH, "contamination_shift", s)
        damping = strength(STRENGTH, "contamination_damping", s)

    opens, closes, amps = opens[kept], closes[kept], amps[:, kept]
    open_click = _click(ch, ch.open_gains, jitter[0], sr, shift=shift, damping=damping)
    close_click = _click(ch, ch.close_gains, jitter[1], sr, shift=shift, damping=damping) * db(ch.close_db)
    if anomaly == "contamination":
        crunch = fault_rng(arng).standard_normal(round(0.004 * sr)) * np.exp(
            -np.arange(round(0.004 * sr)) / (0.001 * sr)
        )
        open_click[: crunch.size] += 0.3 * s * crunch
        close_click[: crunch.size] += 0.3 * s * crunch * db(ch.close_db)
    # Events are placed from just before the clip: a click's ring reaches into it.
    lead = _KERNEL_S * sr
    clicks = scatter_events(
        n + round(lead),
        np.append(opens * sr + lead, weak[0] * sr + lead),
        np.append(amps[0], 0.35 * np.ones(weak[0].size)),
        open_click,
    )[round(lead) :]
    clicks += scatter_events(
        n + round(lead),
        np.append(closes * sr + lead, weak[1] * sr + lead),
        np.append(amps[1], 0.35 * np.ones(weak[1].size)),
        close_click,
    )[round(lead) :]

    gate = _gate(opens, closes, size, hop, sr, ch.ramp_s)
    machine: np.ndarray = clicks + hiss * upsample(gate * flutter * db(ch.hiss_db), hop, n)
    if buzz is not None:
        machine += buzz * upsample(gate, hop, n)
    machine *= np.float32(scale)

    if anomaly == "leak":
        leak = noise32(fault_rng(arng), leak_shape, n)
        level = db(ch.hiss_db) * db(strength(STRENGTH, "leak", s)) * scale
        machine += leak * upsample((1.0 - gate) * flutter * level, hop, n)
    elif anomaly == "contamination":
        frng = fault_rng(arng)
        open_t = np.flatnonzero(gate > 0.5) * (hop / sr)
        count = int(frng.poisson(frng.uniform(30.0, 100.0) * open_t.size * hop / sr))
        at = frng.choice(open_t, count) * sr if open_t.size else np.zeros(0)
        grain = ringing(sr, [min(frng.uniform(5000.0, 7500.0), 0.45 * sr)], [0.0008], [1.0], 0.006)
        peak = db(strength(STRENGTH, "contamination_rattle", s)) * scale
        machine += scatter_events(n, at, peak * frng.lognormal(0.0, 0.5, count), grain)
    return machine.astype(np.float32, copy=False)


VALVE = SourceFamily(
    name="valve", anomaly_kinds=VALVE_KINDS, character=valve_character, sound=valve_sound, target_rms=0.01
)

"""The pump: a motor-driven centrifugal water pump, a stationary sound with fluid in it (MIMII's pumps).

A clip of one hears the impeller's vane-pass tone and harmonics (`rotor.Rotor`)
at a shaft rate just below the synchronous speed of a 2- or 4-pole motor, the
motor's magnetic hum at twice the mains frequency and its rotor-slot whine,
turbulent fluid noise shaped by the pipework's modes, pulsating at the vane
rate (each vane passing the cut-water kicks the pressure) and gurgling (a
fast irregular level wander), with a slow flow fluctuation. Every ID draws
the motor, vanes (5-8), series, pipe, pulsation, gurgle, hum and loudness.

Faults (`PUMP_KINDS`), severity s in [0, 1] scaling `STRENGTH`:

* ``imbalance``: a 1x shaft-rate modulation of the whole sound and a low 1x tone;
* ``clogging``: debris in the impeller: one passage blocked (every shaft
  harmonic appears and the vane pulsation deepens), less flow noise, and the
  unloaded motor speeds up a little;
* ``bearing``: a spalled bearing race: impulses at the defect rate ring a high mode;
* ``cavitation``: vapour bubbles collapsing at the impeller: bursts of
  broadband crackle, clustered at the vane rate, coming and going;
* ``leakage``: a leaking seal or flange: the steady hiss of a jet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal

from . import rotor as rt
from .dsp import (
    SINE,
    butter,
    control_hop,
    db,
    log_bump,
    noise32,
    oscillator,
    rms,
    scatter_events,
    smooth_noise,
    tone_phase,
    unit_shape,
    upsample,
)
from .family import SourceFamily, fault_rng, id_rng, strength

PUMP_KINDS: tuple[str, ...] = ("imbalance", "clogging", "bearing", "cavitation", "leakage")

# (severity 0, severity 1); levels in dB against the ID's calibrated normal machine RMS.
STRENGTH: dict[str, tuple[float, float]] = {
    "imbalance": (0.08, 0.35),  # 1x modulation depth
    "imbalance_tone": (-18.0, -8.0),  # 1x tone, dB
    "clogging": (0.1, 0.5),  # the blocked passage's relative change
    "clogging_pulsation": (0.03, 0.12),  # added vane-rate pulsation depth
    "clogging_flow": (-0.3, -1.5),  # flow noise change, dB
    "clogging_speed": (0.001, 0.006),  # relative speed rise
    "bearing": (-18.0, -8.0),  # impulse peak, dB
    "cavitation": (-24.0, -12.0),  # crackle RMS while it lasts, dB
    "leakage": (-28.0, -16.0),  # hiss RMS, dB
}


@dataclass(frozen=True, eq=False)
class PumpCharacter:
    """One pump's constants, all drawn from its ID."""

    machine_id: str
    rotor: rt.Rotor
    tone_db: float  # vane-pass series against the fluid noise
    flow_corner_hz: float
    flow_order: float
    pipe_hz: float
    pipe_q: float
    pipe_gain: float
    pulsation: float  # vane-rate modulation depth of the fluid noise
    gurgle: float  # fast irregular level wander, relative RMS
    gurgle_time_s: float
    flow_depth: float  # slow flow fluctuation
    hum_hz: float
    hum_amps: np.ndarray
    hum_db: float
    slot_ratio: float  # rotor-slot whine / shaft rate
    slot_db: float
    leak_hz: float
    cavitation_hz: float  # the crackle's low edge
    loudness_db: float


@lru_cache(maxsize=128)
def pump_character(machine_id: str) -> PumpCharacter:
    """The constants of pump `machine_id`, the same in every process."""
    rng = id_rng("pump", machine_id)
    mains = float(rng.choice([50.0, 60.0]))
    poles = int(rng.choice([2, 4]))
    shaft_hz = 2 * mains / poles * (1.0 - rng.uniform(0.01, 0.04))  # induction motor slip
    rotor = rt.Rotor.draw(
        rng,
        shaft_hz=shaft_hz,
        blades=int(rng.integers(5, 9)),
        n_harmonics=16,
        slope=(1.0, 2.0),
        residual_db=(-30.0, -18.0),
        spread=(0.001, 0.003),
    )
    return PumpCharacter(
        machine_id=machine_id,
        rotor=rotor,
        tone_db=rng.uniform(-6.0, 6.0),
        flow_corner_hz=rng.uniform(80.0, 600.0),
        flow_order=rng.uniform(0.5, 1.2),
        pipe_hz=rng.uniform(60.0, 400.0),
        pipe_q=rng.uniform(4.0, 15.0),
        pipe_gain=rng.uniform(0.5, 3.0),
        pulsation=rng.uniform(0.1, 0.35),
        gurgle=rng.uniform(0.1, 0.3),
        gurgle_time_s=rng.uniform(0.03, 0.1),
        flow_depth=rng.uniform(0.03, 0.1),
        hum_hz=2 * mains,
        hum_amps=rng.lognormal(0.0, 0.5, 4) * np.arange(1, 5) ** -1.0,
        hum_db=rng.uniform(-18.0, -6.0),
        slot_ratio=float(rng.integers(24, 49)),
        slot_db=rng.uniform(-32.0, -20.0),
        leak_hz=rng.uniform(2000.0, 6000.0),
        cavitation_hz=rng.uniform(1500.0, 4000.0),
        loudness_db=rng.uniform(-3.0, 3.0),
    )


@lru_cache(maxsize=32)
def _shapes(ch: PumpCharacter, n: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude spectra of unit RMS: fluid noise, leak hiss."""
    f = np.fft.rfftfreq(n, 1.0 / sr)
    fluid = rt.flow_power(
        f,
        corner_hz=ch.flow_corner_hz,
        order=ch.flow_order,
        duct_hz=ch.pipe_hz,
        duct_q=ch.pipe_q,
        duct_gain=ch.pipe_gain,
        sr=sr,
    )
    leak = log_bump(f, min(ch.leak_hz, 0.4 * sr), 0.6) + 1e-9
    out = (unit_shape(fluid, n), unit_shape(leak, n))
    for x in out:
        x.setflags(write=False)
    return out


def pump_sound(
    ch: PumpCharacter,
    *,
    rng: np.random.Generator,
    n: int,
    sr: int,
    anomaly: str | None,
    severity: float,
    arng: np.random.Generator | None,
    scale: float,
) -> np.ndarray:
    """One clip of the pump's own sound, float32, shape (n,): the normal sound times `scale`, plus a fault."""
    s = severity
    hop = control_hop(sr)
    size = n // hop + 2
    factor = 1.0 + (strength(STRENGTH, "clogging_speed", s) if anomaly == "clogging" else 0.0)
    rate = rt.shaft_rate(ch.rotor, rng, size, hop, sr, factor)
    shaft = rt.control_phase(rate, hop, sr, rng)
    k_max = rt.harmonic_count(ch.rotor, float(rate.max()), sr)
    normal = ch.rotor.coefficients(k_max)
    c, pulsation = normal, ch.pulsation
    if anomaly == "clogging":
        c = normal + rt.blade_defect(
            ch.rotor, k_max, fault_rng(arng), change=strength(STRENGTH, "clogging", s)
        )
        pulsation += strength(STRENGTH, "clogging_pulsation", s)
    breathing = 1.0 + ch.rotor.breathing * smooth_noise(rng, size, max(1, round(0.3 * sr / hop)))
    tones = rt.tones(rt.series_table(c, normal), shaft, hop, n) * upsample(breathing, hop, n)

    fluid_shape, leak_shape = _shapes(ch, n, sr)
    fluid = noise32(rng, fluid_shape, n)
    vane = np.cos(2 * np.pi * ch.rotor.blades * shaft)
    gurgle = smooth_noise(rng, size, max(1, round(ch.gurgle_time_s * sr / hop)))
    slow = smooth_noise(rng, size, max(1, round(0.8 * sr / hop)))
    level = np.clip(
        (1.0 + pulsation * vane) * (1.0 + ch.gurgle * gurgle) * (1.0 + ch.flow_depth * slow), 0.0, None
    )
    fluid *= upsample(level, hop, n)
    hum = rt.motor_hum(ch.hum_hz, ch.hum_amps, ch.hum_db, rng, n, sr)
    slot_hz = ch.slot_ratio * ch.rotor.shaft_hz
    slot = oscillator(SINE, tone_phase(slot_hz, n, sr, rng.uniform())) * np.float32(
        math.sqrt(2) * db(ch.slot_db) * (slot_hz < 0.45 * sr)
    )

    tone_gain = db(ch.tone_db)
    flow_gain = db(strength(STRENGTH, "clogging_flow", s)) if anomaly == "clogging" else 1.0
    machine: np.ndarray = tones * np.float32(tone_gain) + fluid * np.float32(flow_gain)
    machine *= np.float32(1.0 / math.sqrt(1.0 + tone_gain**2))
    machine += hum + slot
    machine *= np.float32(scale)

    if anomaly == "imbalance":
        machine = rt.imbalance(
            machine,
            shaft,
            hop,
            fault_rng(arng),
            depth=strength(STRENGTH, "imbalance", s),
            tone_level=math.sqrt(2) * db(strength(STRENGTH, "imbalance_tone", s)),
        )
    elif anomaly == "bearing":
        peak = db(strength(STRENGTH, "bearing", s))
        machine += rt.bearing(ch.rotor, rate, shaft, hop=hop, n=n, rng=fault_rng(arng), peak=peak, sr=sr)
    elif anomaly == "cavitation":
        machine += _cavitation(
            ch, shaft, hop, n, fault_rng(arng), sr, level=db(strength(STRENGTH, "cavitation", s))
        )
    elif anomaly == "leakage":
        frng = fault_rng(arng)
        hiss = noise32(frng, leak_shape, n)
        wander = 1.0 + 0.1 * smooth_noise(frng, size, max(1, round(0.5 * sr / hop)))
        machine += hiss * upsample(wander, hop, n) * np.float32(db(strength(STRENGTH, "leakage", s)))
    return machine


def _cavitation(
    ch: PumpCharacter, shaft: np.ndarray, hop: int, n: int, rng: np.random.Generator, sr: int, *, level: float
) -> np.ndarray:
    """Bubble collapses: sharp high-passed pops, clustered at the vane rate, in episodes; float32, shape (n,).

    `level` is the crackle's RMS while an episode lasts.
    """
    rate = rng.uniform(400.0, 1500.0)  # pops per second at the peak of an episode
    at = np.sort(rng.uniform(0, n, rng.poisson(rate * n / sr)))
    # Episodes come and go over some tenths of a second; within one, the
    # pops gather where the low-pressure zone behind each vane sits.
    episode = np.clip(smooth_noise(rng, n // hop + 2, max(1, round(0.25 * sr / hop))) + 0.3, 0.0, 1.0)
    vane = 0.5 * (1.0 + np.cos(2 * np.pi * (ch.rotor.blades * shaft + rng.uniform())))
    keep = rng.uniform(size=at.size) < np.interp(at / hop, np.arange(episode.size), episode * vane)
    at = at[keep]
    t = np.arange(max(8, round(0.002 * sr))) / sr
    b, a = butter(2, min(ch.cavitation_hz, 0.4 * sr), "highpass", sr)
    kernel = signal.lfilter(b, a, rng.standard_normal(t.size) * np.exp(-t / 0.0003))
    amp = rng.lognormal(0.0, 0.7, at.size)
    pops = scatter_events(n, at, amp, kernel)
    # The crackle's RMS is `level` while an episode lasts, whatever the draws gave.
    active = max(float(np.mean(episode)), 1e-3)
    return pops * np.float32(level * math.sqrt(active) / (rms(pops) or 1.0))


PUMP = SourceFamily(
    name="pump", anomaly_kinds=PUMP_KINDS, character=pump_character, sound=pump_sound, target_rms=0.0316
)

"""The fan: an impeller in a duct, a stationary sound (MIMII's fans are industrial ventilation fans).

A clip of one hears the blade-pass tone and its harmonics at blades x shaft
rate (`rotor.Rotor`, with faint other shaft harmonics from residual
imbalance), broadband turbulence noise shaped by the duct's modes, the
motor's hum at twice the mains frequency, and a slow fluctuation of the flow
and the tones. Every ID draws shaft rate (12-50 Hz), blade count (3-12), the
series' fall-off and pattern, tone-to-noise ratio, duct, hum and loudness.

Faults (`FAN_KINDS`), severity s in [0, 1] scaling `STRENGTH`:

* ``imbalance``: a 1x shaft-rate modulation of the whole sound and a low 1x tone;
* ``blade_damage``: one blade differs (damaged, bent or fouled): every shaft
  harmonic appears, sub-harmonics of the blade-pass tone;
* ``clogging``: a clogged filter or duct: less flow, so less flow noise, the
  unloaded motor speeds up (the tones rise) and the restriction whistles;
* ``bearing``: a spalled bearing race: impulses at the defect rate ring a high mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from . import rotor as rt
from .dsp import control_hop, db, log_bump, noise32, smooth_noise, unit_shape, upsample
from .family import SourceFamily, fault_rng, id_rng, strength

FAN_KINDS: tuple[str, ...] = ("imbalance", "blade_damage", "clogging", "bearing")

# (severity 0, severity 1); levels in dB against the ID's calibrated normal machine RMS.
STRENGTH: dict[str, tuple[float, float]] = {
    "imbalance": (0.08, 0.35),  # 1x modulation depth
    "imbalance_tone": (-12.0, -2.0),  # 1x tone, dB
    "blade_damage": (0.2, 0.9),  # one blade's relative change
    "clogging_speed": (0.005, 0.02),  # relative speed rise
    "clogging_flow": (-0.3, -1.2),  # flow noise change, dB
    "clogging_whistle": (-38.0, -26.0),  # whistle level, dB
    "bearing": (-14.0, -4.0),  # impulse peak, dB
}


@dataclass(frozen=True, eq=False)
class FanCharacter:
    """One fan's constants, all drawn from its ID."""

    machine_id: str
    rotor: rt.Rotor
    tone_db: float  # blade-pass series against the flow noise
    flow_corner_hz: float
    flow_order: float
    duct_hz: float
    duct_q: float
    duct_gain: float
    flow_depth: float  # slow flow fluctuation, relative RMS
    flow_time_s: float  # its time scale
    hum_hz: float  # twice the mains frequency
    hum_amps: np.ndarray
    hum_db: float
    whistle_hz: float  # where a restriction would whistle
    loudness_db: float


@lru_cache(maxsize=128)
def fan_character(machine_id: str) -> FanCharacter:
    """The constants of fan `machine_id`, the same in every process."""
    rng = id_rng("fan", machine_id)
    rotor = rt.Rotor.draw(
        rng,
        shaft_hz=rng.uniform(12.0, 50.0),
        blades=int(rng.integers(3, 13)),
        n_harmonics=24,
        slope=(0.7, 1.5),
        residual_db=(-32.0, -20.0),
        spread=(0.002, 0.006),
    )
    return FanCharacter(
        machine_id=machine_id,
        rotor=rotor,
        tone_db=rng.uniform(-8.0, 4.0),
        flow_corner_hz=rng.uniform(200.0, 1500.0),
        flow_order=rng.uniform(0.6, 1.4),
        duct_hz=343.0 / (2 * rng.uniform(0.5, 4.0)),
        duct_q=rng.uniform(4.0, 15.0),
        duct_gain=rng.uniform(0.2, 2.0),
        flow_depth=rng.uniform(0.03, 0.12),
        flow_time_s=rng.uniform(0.3, 1.5),
        hum_hz=2 * float(rng.choice([50.0, 60.0])),
        hum_amps=rng.lognormal(0.0, 0.5, 4) * np.arange(1, 5) ** -1.0,
        hum_db=rng.uniform(-26.0, -12.0),
        whistle_hz=rng.uniform(1500.0, 5000.0),
        loudness_db=rng.uniform(-3.0, 3.0),
    )


@lru_cache(maxsize=32)
def _flow_shape(ch: FanCharacter, n: int, sr: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1.0 / sr)
    power = rt.flow_power(
        f,
        corner_hz=ch.flow_corner_hz,
        order=ch.flow_order,
        duct_hz=ch.duct_hz,
        duct_q=ch.duct_q,
        duct_gain=ch.duct_gain,
        sr=sr,
    )
    shape = unit_shape(power, n)
    shape.setflags(write=False)
    return shape


@lru_cache(maxsize=32)
def _whistle_shape(ch: FanCharacter, n: int, sr: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1.0 / sr)
    shape = unit_shape(log_bump(f, min(ch.whistle_hz, 0.4 * sr), 0.08) + 1e-9, n)
    shape.setflags(write=False)
    return shape


def fan_sound(
    ch: FanCharacter,
    *,
    rng: np.random.Generator,
    n: int,
    sr: int,
    anomaly: str | None,
    severity: float,
    arng: np.random.Generator | None,
    scale: float,
) -> np.ndarray:
    """One clip of the fan's own sound, float32, shape (n,): the normal sound times `scale`, plus the fault.

    The normal parts draw only from `rng`, the fault only from `arng`, so a
    seed's faulty clip is its normal clip with the fault.
    """
    s = severity
    hop = control_hop(sr)
    size = n // hop + 2
    factor = 1.0 + (strength(STRENGTH, "clogging_speed", s) if anomaly == "clogging" else 0.0)
    rate = rt.shaft_rate(ch.rotor, rng, size, hop, sr, factor)
    shaft = rt.control_phase(rate, hop, sr, rng)
    k_max = rt.harmonic_count(ch.rotor, float(rate.max()), sr)
    normal = ch.rotor.coefficients(k_max)
    c = normal
    if anomaly == "blade_damage":
        c = normal + rt.blade_defect(
            ch.rotor, k_max, fault_rng(arng), change=strength(STRENGTH, "blade_damage", s)
        )
    breathing = 1.0 + ch.rotor.breathing * smooth_noise(rng, size, max(1, round(0.3 * sr / hop)))
    tones = rt.tones(rt.series_table(c, normal), shaft, hop, n) * upsample(breathing, hop, n)

    flow = noise32(rng, _flow_shape(ch, n, sr), n)
    fluctuation = 1.0 + ch.flow_depth * smooth_noise(rng, size, max(1, round(ch.flow_time_s * sr / hop)))
    flow *= upsample(fluctuation, hop, n)
    hum = rt.motor_hum(ch.hum_hz, ch.hum_amps, ch.hum_db, rng, n, sr)

    tone_gain = db(ch.tone_db)
    flow_gain = 1.0
    if anomaly == "clogging":
        flow_gain = db(strength(STRENGTH, "clogging_flow", s))
    machine: np.ndarray = tones * np.float32(tone_gain) + flow * np.float32(flow_gain)
    machine *= np.float32(1.0 / math.sqrt(1.0 + tone_gain**2))
    machine += hum
    machine *= np.float32(scale)

    if anomaly == "clogging":
        whistle = noise32(fault_rng(arng), _whistle_shape(ch, n, sr), n)
        machine += whistle * np.float32(db(strength(STRENGTH, "clogging_whistle", s)))
    elif anomaly == "imbalance":
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
    return machine


FAN = SourceFamily(
    name="fan", anomaly_kinds=FAN_KINDS, character=fan_character, sound=fan_sound, target_rms=0.0316
)

"""The slide rail's constants, drawn per ID, and the carriage's kinematics at control rate.

The fault strengths live here too: the ``stall`` fault is a change of the
kinematics, and the other faults (`slider_faults.py`) read the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .background import FactoryNoise
from .dsp import boxcar, control_hop
from .family import id_rng, strength

ANOMALY_KINDS: tuple[str, ...] = ("dent", "squeal", "loose_belt", "speed", "stall", "bearing")

# Severity s in [0, 1] maps linearly from the first value (s = 0) to the
# second (s = 1). Levels are dB relative to the ID's calibrated normal machine
# RMS (peak level for the impulsive kinds). Tuned so that a per-mel-bin
# Gaussian baseline catches each kind only partly (AUC about 0.5-0.9).
STRENGTH: dict[str, tuple[float, float]] = {
    "dent": (11.0, 19.0),  # click peak, dB
    "squeal": (-6.0, 4.0),  # tone level, dB
    "loose_belt": (-4.0, 4.0),  # rattle peak, dB
    "loose_belt_flutter": (0.2, 0.55),  # modulation depth
    "speed": (0.08, 0.22),  # relative speed change, either sign
    "stall": (-6.0, 2.0),  # whine and buzz level, dB
    "stall_hold": (0.12, 0.45),  # seconds stopped
    "bearing": (7.0, 15.0),  # impulse peak, dB
}


def fault_strength(name: str, severity: float) -> float:
    """The slider's `STRENGTH[name]` at `severity` in [0, 1]."""
    return strength(STRENGTH, name, severity)


@dataclass(frozen=True, eq=False)
class SliderCharacter:
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
    background: FactoryNoise
    loudness_db: float
    snr_db: float


@lru_cache(maxsize=128)
def slider_character(machine_id: str) -> SliderCharacter:
    """The constants of the slide rail `machine_id`, the same in every process."""
    rng = id_rng("slider", machine_id)
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
    return SliderCharacter(
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
        background=FactoryNoise.draw(rng),
        loudness_db=rng.uniform(-2.0, 2.0),
        snr_db=rng.uniform(3.0, 9.0),
    )


@dataclass(frozen=True)
class Motion:
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


def slider_motion(
    ch: SliderCharacter,
    rng: np.random.Generator,
    *,
    n: int,
    sr: int,
    speed_factor: float = 1.0,
    stall_rng: np.random.Generator | None = None,
    stall_severity: float = 0.0,
) -> Motion:
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
        hold = (stop + decel, stop + decel + fault_strength("stall_hold", stall_severity))
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

    hop = control_hop(sr)
    # Integrate from before the first stroke's start so the position is exact.
    pre = math.ceil(-t0 * sr / hop)
    t = (np.arange(pre + n // hop + 2) - pre) * (hop / sr)
    velocity = np.interp(t, bt.ravel(), bv.ravel())
    # A jerk-limited controller rounds the trapezoid's corners (an S-curve).
    velocity = boxcar(velocity, max(1, round(ch.jerk_s * sr / hop)))
    position = (ch.stroke_m if first_back else 0.0) + np.cumsum(velocity) * (hop / sr)
    holding = np.zeros(t.size)
    if hold is not None:
        holding[(t >= hold[0]) & (t < hold[1])] = 1.0
        holding = boxcar(holding, max(1, round(0.01 * sr / hop)))
    starts = start * sr
    return Motion(
        hop=hop,
        speed=np.abs(velocity[pre:]),
        accel=np.abs(np.gradient(velocity))[pre:] * (sr / hop),
        position=position[pre:],
        holding=holding[pre:],
        starts=starts[(starts >= 0) & (starts < n)],
        cruise_v=float(ch.v_fwd * clip_speed * speed_factor),
    )

"""The slide rail: a carriage that a stepper motor drives back and forth along a rail through a toothed belt.

A clip of one hears:

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
* factory background (`background.FactoryNoise`): brown/pink noise, a broad
  bump, distant machines' tones, mains hum with harmonics and occasional dull
  distant impacts, at an SNR.

Every machine ID has its own stroke length, speeds, step rate, harmonic
pattern, resonances, dwell times, background and loudness, all derived from
the ID alone. Within an ID, clips vary by speed and dwell jitter, the phase of
the stroke cycle at the clip start and all the noises.

Anomalies (`ANOMALY_KINDS`), each with a severity drawn uniformly in [0, 1]
that scales its strength within `slider_motion.STRENGTH`:

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

import math
from functools import lru_cache

import numpy as np
from scipy import signal

from .background import factory_background
from .dsp import (
    SINE,
    audio_phase,
    butter,
    child,
    db,
    oscillator,
    phase,
    rms,
    smooth_noise,
    tone_phase,
    upsample,
    wavetable,
)
from .family import Rendered, Snr, clip_snr
from .slider_faults import FAULTS
from .slider_motion import (
    ANOMALY_KINDS,
    Motion,
    SliderCharacter,
    fault_strength,
    slider_character,
    slider_motion,
)

# Mixture RMS before the ID's loudness offset: -30 dBFS leaves headroom for
# clicks and impacts (real MIMII slider clips sit lower still, near -45 dBFS).
TARGET_RMS = 0.0316
CALIBRATION_SECONDS = 10.0


@lru_cache(maxsize=32)
def _structure_response(machine_id: str, n: int, sr: int) -> np.ndarray:
    """Frequency response of the rail and carriage at the n-sample rfft bins, complex64.

    A direct path plus parallel resonant modes. Small stiff parts radiate
    poorly at low frequencies, so the direct path is high-passed: the motor's
    low step-rate harmonics are felt more than heard.
    """
    ch = slider_character(machine_id)
    f = np.fft.rfftfreq(n, 1.0 / sr)
    b, a = signal.butter(2, ch.radiation_hz, btype="highpass", fs=sr)
    response: np.ndarray = ch.direct_gain * signal.freqz(b, a, worN=f, fs=sr)[1]
    for f0, q, g in zip(ch.res_hz, ch.res_q, ch.res_gain, strict=True):
        if f0 < 0.45 * sr:
            b, a = signal.iirpeak(f0, q, fs=sr)
            response += g * signal.freqz(b, a, worN=f, fs=sr)[1]
    response = response.astype(np.complex64)
    response.setflags(write=False)
    return response


def _structure(ch: SliderCharacter, x: np.ndarray, sr: int) -> np.ndarray:
    """The excitation `x`, shape (n,), as heard through the rail and carriage; float32 (n,)."""
    # Filtered over the whole clip at once: the modes ring out within tens of
    # milliseconds, so the FFT's circular wrap is inaudible.
    spec = np.fft.rfft(x)
    spec *= _structure_response(ch.machine_id, x.size, sr)
    return np.fft.irfft(spec, x.size).astype(np.float32)


def slider_machine(ch: SliderCharacter, m: Motion, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """The machine's own sound for motion `m`, uncalibrated, float32, shape (n,)."""
    hop = m.hop
    u = m.speed / ch.v_fwd
    # Band-limit the step-rate series at this clip's top speed (no aliasing).
    top_rate = ch.steps_per_m * max(float(m.speed.max()), 1e-3)
    k = int(np.clip(0.45 * sr // top_rate, 1, ch.harmonic_amps.size))
    table = wavetable(ch.harmonic_amps[:k], ch.harmonic_phases[:k])
    table *= np.float32(0.25 / math.sqrt(np.sum(ch.harmonic_amps[:k] ** 2) / 2))
    step_phase = audio_phase(phase(m.speed * ch.steps_per_m, hop, sr, rng.uniform()), hop, n)

    # Torque ripple grows with speed and with the extra torque of accelerating.
    accel_ref = ch.v_fwd / ch.ramp_s
    motor_env = np.sqrt(np.clip(u, 0.0, 2.0)) * (
        1.0 + ch.accel_boost * np.clip(m.accel / accel_ref, 0.0, 2.0)
    )
    # Rolling noise grows a little faster than speed and is never steady:
    # balls, grease and dust make it rough.
    rough = np.clip(1.0 + 0.35 * smooth_noise(rng, u.size, max(1, round(0.02 * sr / hop))), 0.2, None)
    rolling_env = ch.rolling_gain * u * np.sqrt(np.sqrt(u)) * rough
    # The chopper drive whines faintly at idle current while the carriage
    # dwells; while stepping, the sinusoidal phase current modulates the
    # carrier, so sidebands spread from it as the step rate rises.
    moving = np.clip(u * 4.0, 0.0, 1.0)
    idle_env = (1.0 - moving) * (0.5 * db(ch.idle_whine_db))
    chop_env = moving * db(ch.chopper_db)

    b, a = butter(1, ch.rolling_hp_hz, "highpass", sr)
    hiss = signal.lfilter(b, a, rng.standard_normal(n, dtype=np.float32))
    excitation = oscillator(table, step_phase) * upsample(motor_env, hop, n)
    excitation += hiss * upsample(rolling_env, hop, n)
    machine = _structure(ch, excitation, sr)
    if ch.whine_hz < 0.4 * sr:
        whine = oscillator(SINE, tone_phase(ch.whine_hz, n, sr, rng.uniform()))
        current = upsample(idle_env, hop, n) + oscillator(SINE, step_phase) * upsample(chop_env, hop, n)
        machine += whine * current
    return machine


class SliderModel:
    """The slide rail as a `family.MachineModel`."""

    anomaly_kinds = ANOMALY_KINDS
    default_snr: Snr = 6.0
    stream_key: tuple[int, ...] = ()

    @staticmethod
    @lru_cache(maxsize=128)
    def calibration(machine_id: str, sample_rate: int) -> float:
        """RMS of a nominal normal render of the ID's machine sound: the ID's 0 dB."""
        ch = slider_character(machine_id)
        seq = np.random.SeedSequence([0xCA1B, int(machine_id)])
        n = round(CALIBRATION_SECONDS * sample_rate)
        motion = slider_motion(ch, child(seq, 0), n=n, sr=sample_rate)
        return rms(slider_machine(ch, motion, child(seq, 1), n, sample_rate)) or 1.0

    def render(
        self,
        machine_id: str,
        *,
        anomaly: str | None,
        seq: np.random.SeedSequence,
        duration: float,
        sample_rate: int,
        snr_db: Snr | None,
    ) -> Rendered:
        ch = slider_character(machine_id)
        sr = sample_rate
        n = round(duration * sr)
        # Separate streams: the anomaly's draws leave the normal parts alone,
        # so a seed's anomalous clip is its normal clip plus the fault.
        arng = child(seq, 3)
        severity = float(arng.uniform()) if anomaly is not None else 0.0
        speed_factor = 1.0
        if anomaly == "speed":
            speed_factor += fault_strength("speed", severity) * (1.0 if arng.uniform() < 0.5 else -1.0)
        motion = slider_motion(
            ch,
            child(seq, 0),
            n=n,
            sr=sr,
            speed_factor=speed_factor,
            stall_rng=arng if anomaly == "stall" else None,
            stall_severity=severity,
        )
        machine = slider_machine(ch, motion, child(seq, 1), n, sr)
        machine *= np.float32(1.0 / self.calibration(machine_id, sr))
        if anomaly in FAULTS:
            machine = FAULTS[anomaly](ch, motion, machine, arng, severity, sr)

        snr = ch.snr_db if snr_db is None else clip_snr(snr_db, seq)
        background = factory_background(ch.background, child(seq, 2), n, sr)
        mix = machine + background * np.float32(db(-snr))
        # One gain per ID and SNR (and a little placement jitter), not per
        # clip: a louder anomaly stays louder.
        gain = TARGET_RMS * db(ch.loudness_db) / math.sqrt(1.0 + db(-snr) ** 2)
        gain *= db(0.3 * child(seq, 4).standard_normal())
        audio = np.clip(mix * np.float32(gain), -1.0, 1.0).astype(np.float32)
        return Rendered(audio=audio, severity=severity, snr_db=snr)

"""The common rest of a fan's, pump's or valve's clip: calibration, room, microphone, surroundings, SNR, gain.

A `SceneModel` wraps a `family.SourceFamily` (the machine's own sound and its
faults) into a `family.MachineModel`. Per ID it draws, besides the family's
constants, its `background.Surroundings` and its acoustics: a room (a short
synthetic impulse response: the direct sound, a few early reflections and an
exponentially decaying, darkening tail), a farther path for the distant
sounds (less direct sound, fewer highs) and a microphone (a random smooth EQ
with a low cut and a high roll-off). A clip is

    mic * (room * machine + background * 10 ** (-snr / 20))

with the machine at its ID's calibrated level (the RMS of one nominal normal
render is its 0 dB, so a fault that adds energy is louder) and the
background of unit RMS: noise floor, mains hum (after the microphone: it is
picked up by the cable), the neighbouring machine and knocks (through the far
path). The neighbour is one of a few renders of its family's normal sound,
heard from a random point of it.
All filtering is one multiplication in the frequency domain over the whole
clip; the tails that wrap around the clip's end are those of a machine that
ran before it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy import signal

from .background import Surroundings, hum, knocks, noise_floor_shape
from .dsp import child, db, log_bump, noise_spectrum, rms
from .family import Rendered, Snr, SourceFamily, clip_snr, family_key, id_rng

CALIBRATION_SECONDS = 10.0
NEIGHBOUR_STREAM = 6
NEIGHBOUR_TAKES = 4


@dataclass(frozen=True, eq=False)
class Acoustics:
    """Room and microphone of one ID."""

    rt60_s: float
    direct_db: float  # direct against reverberant energy
    far_db: float  # the far path's direct sound against the near one
    far_cut_hz: float
    wall_cut_hz: float  # the tail darkens: walls absorb the highs
    ir_seed: int
    mic_cut_hz: float
    mic_top_hz: float
    mic_bumps: tuple[tuple[float, float, float], ...]  # (centre Hz, width octaves, gain dB)
    mic_tilt: float  # dB per octave around 1 kHz

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Acoustics:
        return cls(
            rt60_s=rng.uniform(0.15, 0.8),
            direct_db=rng.uniform(-2.0, 10.0),
            far_db=rng.uniform(-14.0, -6.0),
            far_cut_hz=rng.uniform(1500.0, 4000.0),
            wall_cut_hz=rng.uniform(2000.0, 6000.0),
            ir_seed=int(rng.integers(0, 2**31)),
            mic_cut_hz=rng.uniform(20.0, 120.0),
            mic_top_hz=rng.uniform(5000.0, 7800.0),
            mic_bumps=tuple(
                (
                    math.exp(rng.uniform(math.log(200.0), math.log(6000.0))),
                    rng.uniform(0.3, 1.2),
                    rng.normal(0, 3),
                )
                for _ in range(3)
            ),
            mic_tilt=rng.uniform(-1.5, 1.5),
        )


@dataclass(frozen=True, eq=False)
class SceneCharacter:
    surroundings: Surroundings
    acoustics: Acoustics


def _impulse_response(ac: Acoustics, rng: np.random.Generator, sr: int, *, direct_db: float) -> np.ndarray:
    """A room's impulse response of unit energy, float64, shape (about 1.2 rt60 s,)."""
    length = max(64, int(min(1.0, 1.2 * ac.rt60_s) * sr))
    t = np.arange(length) / sr
    tail = rng.standard_normal(length) * np.exp(-6.91 * t / ac.rt60_s)
    tail *= np.clip((t - 0.003) / 0.01, 0.0, 1.0)  # the diffuse field builds up after the first reflections
    b, a = signal.butter(1, min(ac.wall_cut_hz, 0.45 * sr), fs=sr)
    tail = signal.lfilter(b, a, tail)
    taps = (rng.uniform(0.002, 0.02, 5) * sr).astype(int)
    tail[taps] += rng.uniform(0.2, 0.6, 5) * rng.choice([-1.0, 1.0], 5) * np.sqrt(np.sum(tail**2))
    tail *= 1.0 / (np.sqrt(np.sum(tail**2)) * db(direct_db))
    tail[0] += 1.0
    response: np.ndarray = tail / np.sqrt(np.sum(tail**2))
    return response


def _mic(ac: Acoustics, f: np.ndarray, sr: int) -> np.ndarray:
    """The microphone's magnitude response at `f`, float64; mean power 1 over 50 Hz to 0.45 sr."""
    level_db = ac.mic_tilt * np.log2(np.maximum(f, 20.0) / 1000.0)
    for centre, width, gain in ac.mic_bumps:
        level_db += gain * log_bump(f, min(centre, 0.4 * sr), width)
    mag = 10 ** (level_db / 20)
    mag *= (f / ac.mic_cut_hz) ** 2 / (1.0 + (f / ac.mic_cut_hz) ** 2)
    mag /= np.sqrt(1.0 + (f / min(ac.mic_top_hz, 0.45 * sr)) ** 8)
    band = (f >= 50.0) & (f <= 0.45 * sr)
    normalised: np.ndarray = mag / np.sqrt(np.mean(mag[band] ** 2))
    return normalised


@lru_cache(maxsize=32)
def _responses(sc: SceneCharacter, n: int, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At the n-sample rfft bins: machine path and far path (complex64), noise floor amplitude (float32)."""
    ac = sc.acoustics
    f = np.fft.rfftfreq(n, 1.0 / sr)
    mic = _mic(ac, f, sr)
    rng = np.random.default_rng(ac.ir_seed)
    near_ir = _impulse_response(ac, rng, sr, direct_db=ac.direct_db)
    far_ir = _impulse_response(ac, rng, sr, direct_db=ac.direct_db + ac.far_db)
    near = np.fft.rfft(near_ir[:n], n) * mic
    far = np.fft.rfft(far_ir[:n], n) * mic / np.sqrt(1.0 + (f / ac.far_cut_hz) ** 4)
    floor = np.sqrt(noise_floor_shape(sc.surroundings, n, sr) * (n**2 / 2)) * mic
    out = (near.astype(np.complex64), far.astype(np.complex64), floor.astype(np.float32))
    for x in out:
        x.setflags(write=False)
    return out


class SceneModel:
    """A `family.SourceFamily` in its room, as a `family.MachineModel`.

    `neighbours` are the families whose normal sound a neighbouring machine may make.
    """

    default_snr: Snr = (-6.0, 6.0)

    def __init__(self, source: SourceFamily, neighbours: Mapping[str, SourceFamily]) -> None:
        self.source = source
        self.anomaly_kinds = source.anomaly_kinds
        self.stream_key = family_key(source.name)
        self._neighbours = {k: v for k, v in neighbours.items() if k != source.name}

    @lru_cache(maxsize=128)  # noqa: B019 - the models live as long as the process
    def scene(self, machine_id: str) -> SceneCharacter:
        """The ID's surroundings and acoustics, the same in every process."""
        rng = id_rng(f"{self.source.name}/scene", machine_id)
        return SceneCharacter(
            surroundings=Surroundings.draw(rng, tuple(sorted(self._neighbours))),
            acoustics=Acoustics.draw(rng),
        )

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
        src, sr = self.source, sample_rate
        n = round(duration * sr)
        ch = src.character(machine_id)
        sc = self.scene(machine_id)
        arng = child(seq, 3)
        severity = float(arng.uniform()) if anomaly is not None else 0.0
        machine = src.sound(
            ch,
            rng=child(seq, 0),
            n=n,
            sr=sr,
            anomaly=anomaly,
            severity=severity,
            arng=arng if anomaly is not None else None,
            scale=1.0 / calibration(src, machine_id, sr),
        )
        snr = clip_snr(self.default_snr if snr_db is None else snr_db, seq)
        near, far, floor = _responses(sc, n, sr)
        spec = scipy.fft.rfft(machine) * near

        sur, bg_rng = sc.surroundings, child(seq, 2)
        distant = knocks(sur, bg_rng, n, sr)
        if sur.neighbour is not None:
            family, neighbour_id = sur.neighbour
            takes = neighbour_takes(self._neighbours[family], neighbour_id, n, sr)
            pick = child(seq, NEIGHBOUR_STREAM)
            take = takes[int(pick.integers(0, len(takes)))]
            distant += np.roll(take, int(pick.integers(0, n))) * np.float32(db(sur.neighbour_db))
        background = noise_spectrum(bg_rng, floor)
        if distant.any():
            background += scipy.fft.rfft(distant) * far
        bg_gain = db(-snr) / sur.tonal_gain
        spec += background * np.complex64(bg_gain)
        mix = scipy.fft.irfft(spec, n)
        mix += hum(sur, bg_rng, n, sr) * np.float32(bg_gain)

        # One gain per ID and SNR (and a little placement jitter), not per
        # clip: a louder anomaly stays louder.
        gain = src.target_rms * db(ch.loudness_db) / math.sqrt(1.0 + db(-snr) ** 2)
        gain *= db(0.3 * child(seq, 4).standard_normal())
        audio = np.clip(mix * np.float32(gain), -1.0, 1.0).astype(np.float32)
        return Rendered(audio=audio, severity=severity, snr_db=snr)


@lru_cache(maxsize=256)
def calibration(source: SourceFamily, machine_id: str, sample_rate: int) -> float:
    """RMS of a nominal normal render of the ID's own sound: the ID's 0 dB."""
    seq = np.random.SeedSequence([0xCA1B, zlib.crc32(source.name.encode()), int(machine_id)])
    n = round(CALIBRATION_SECONDS * sample_rate)
    x = source.sound(
        source.character(machine_id),
        rng=child(seq, 0),
        n=n,
        sr=sample_rate,
        anomaly=None,
        severity=0.0,
        arng=None,
        scale=1.0,
    )
    return rms(x) or 1.0


@lru_cache(maxsize=16)
def neighbour_takes(
    source: SourceFamily, machine_id: str, n: int, sample_rate: int
) -> tuple[np.ndarray, ...]:
    """A few normal renders of a neighbouring machine at its calibrated level, float32, shape (n,) each.

    A clip hears one of them from a random point on (wrapping round): far cheaper than a fresh
    render per clip, and a distant machine's own variety is not what a detector should learn.
    """
    scale = 1.0 / calibration(source, machine_id, sample_rate)
    takes = []
    for take in range(NEIGHBOUR_TAKES):
        seq = np.random.SeedSequence([0x4E1B, zlib.crc32(source.name.encode()), int(machine_id), take])
        x = source.sound(
            source.character(machine_id),
            rng=child(seq, 0),
            n=n,
            sr=sample_rate,
            anomaly=None,
            severity=0.0,
            arng=None,
            scale=scale,
        )
        x.setflags(write=False)
        takes.append(x)
    return tuple(takes)

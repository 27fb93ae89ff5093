"""What every machine family offers the data-set writer, and the helpers the families share.

A family turns (machine ID, fault or None, a clip's seed sequence, duration,
rate, SNR) into one clip (`Rendered`). The SNR is a number of dB, a
``(low, high)`` range drawn uniformly per clip, or None for the family's own
default (`MachineModel.default_snr`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .dsp import child

# A fixed level in dB or a (low, high) range drawn per clip.
Snr = float | tuple[float, float]
# The stream of the per-clip SNR draw; 0-4 are the slider's machine, motion, background, fault and gain.
SNR_STREAM = 5


@dataclass(frozen=True)
class Rendered:
    """One clip: float32 audio in [-1, 1], shape (n,); the fault's severity in [0, 1] (0 for normal)."""

    audio: np.ndarray
    severity: float
    snr_db: float


class MachineModel(Protocol):
    """A machine family as `dataset.py` drives it."""

    anomaly_kinds: tuple[str, ...]
    # What `generate_dataset` uses when no SNR is given.
    default_snr: Snr
    # Appended to (seed, ID, split, index) to make a clip's seed sequence: () for the slider (its
    # clips predate the other families), a family tag for the others so that their clips differ.
    stream_key: tuple[int, ...]

    def render(
        self,
        machine_id: str,
        *,
        anomaly: str | None,
        seq: np.random.SeedSequence,
        duration: float,
        sample_rate: int,
        snr_db: Snr | None,
    ) -> Rendered: ...


def strength(table: dict[str, tuple[float, float]], name: str, severity: float) -> float:
    """`table[name]` is (value at severity 0, value at severity 1); linear in between."""
    lo, hi = table[name]
    return lo + (hi - lo) * severity


def id_rng(family: str, machine_id: str) -> np.random.Generator:
    """The generator of one machine's constants: the same for an ID of a family in every process."""
    return np.random.default_rng(np.random.SeedSequence([zlib.crc32(family.encode()), int(machine_id)]))


def family_key(family: str) -> tuple[int, ...]:
    """A family's `stream_key`."""
    return (zlib.crc32(family.encode()),)


def clip_snr(snr: Snr, seq: np.random.SeedSequence) -> float:
    """The clip's SNR in dB: `snr` itself, or a uniform draw from the range from the clip's own stream."""
    if isinstance(snr, tuple):
        return float(child(seq, SNR_STREAM).uniform(snr[0], snr[1]))
    return float(snr)


def fault_rng(arng: np.random.Generator | None) -> np.random.Generator:
    """The fault's own random stream, which every clip with a fault is given (`SoundFn`)."""
    assert arng is not None, "a clip with a fault draws it from its own random stream"
    return arng


class SoundFn(Protocol):
    """A family's own sound: the normal machine times `scale`, plus the fault; float32, shape (n,).

    The normal parts draw only from `rng` and the fault only from `arng` (None
    for a normal clip), so a seed's faulty clip is its normal clip with the fault.
    """

    def __call__(
        self,
        ch: Any,
        *,
        rng: np.random.Generator,
        n: int,
        sr: int,
        anomaly: str | None,
        severity: float,
        arng: np.random.Generator | None,
        scale: float,
    ) -> np.ndarray: ...


@dataclass(frozen=True, eq=False)
class SourceFamily:
    """A family that describes only its machine's own sound; `scene.SceneModel` adds the rest.

    `character(machine_id)` returns the ID's constants (cached, with a
    `loudness_db` attribute); `target_rms` is the mixture's RMS at 0 dB
    loudness, chosen so that the family's peaks stay below full scale.
    """

    name: str
    anomaly_kinds: tuple[str, ...]
    character: Callable[[str], Any]
    sound: SoundFn
    target_rms: float

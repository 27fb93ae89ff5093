"""Argument checks, per-clip seeding, `render_clip`, the DCASE 2020 Task 2 writer and anomaly_kinds.csv."""

from __future__ import annotations

import csv
import math
import numbers
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import numpy as np
import soundfile as sf

from training.errors import SynthError

from .family import MachineModel, Rendered, Snr
from .registry import machine_model

SAMPLE_RATE = 16000
# Beside the test clips: file,machine_id,kind,severity of each anomalous clip.
ANOMALY_KINDS_FILE = "anomaly_kinds.csv"
_SPLITS = {"train_normal": 0, "test_normal": 1, "test_anomaly": 2}


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


def parse_snr(text: str) -> Snr:
    """``"6"`` -> 6.0 dB; ``"-6:6"`` -> (-6.0, 6.0), a range drawn uniformly per clip; else SynthError."""
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or len(values) != len(parts):
        raise SynthError(f"SNR must be a number of dB such as 6 or a range such as -6:6, got {text!r}")
    snr = check_snr(values[0] if len(values) == 1 else (values[0], values[1]))
    assert snr is not None  # only None itself checks as None
    return snr


def check_snr(snr_db: object) -> Snr | None:
    """`snr_db` as a float, a (low, high) tuple of floats with low <= high, or None; SynthError otherwise."""
    if snr_db is None:
        return None
    if isinstance(snr_db, numbers.Real) and not isinstance(snr_db, bool) and math.isfinite(snr_db):
        return float(snr_db)
    if isinstance(snr_db, (tuple, list)) and len(snr_db) == 2:
        lo, hi = snr_db
        if (
            all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)
            )
            and lo <= hi
        ):
            return (float(lo), float(hi))
    raise SynthError(
        f"snr_db must be a finite number of dB, a (low, high) range with low <= high, or None, got {snr_db!r}"
    )


def _check_id(machine_id: object) -> str:
    if not isinstance(machine_id, str) or not re.fullmatch(r"[0-9]{2}", machine_id):
        raise SynthError(f"machine_id must be two digits such as '00' or '06', got {machine_id!r}")
    return machine_id


def _check_anomaly(model: MachineModel, machine_type: str, anomaly: object) -> None:
    if anomaly is not None and anomaly not in model.anomaly_kinds:
        supported = ", ".join(model.anomaly_kinds)
        raise SynthError(f"unknown anomaly kind {anomaly!r} for {machine_type}; supported: {supported}")


# numbers.Integral and numbers.Real also hold numpy's scalars, which compute as int and float do.
def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> TypeGuard[float]:
    return isinstance(x, numbers.Real)


def _check_audio_args(duration: object, sample_rate: object) -> None:
    if not (_is_real(duration) and math.isfinite(duration) and duration > 0):
        raise SynthError(f"duration must be a positive number of seconds, got {duration!r}")
    if not _is_int(sample_rate) or sample_rate < 8000:
        raise SynthError(f"sample_rate must be an integer of at least 8000 Hz, got {sample_rate!r}")
    if round(duration * sample_rate) < 64:
        raise SynthError(f"duration {duration} s is too short at {sample_rate} Hz")


def _seed_sequence(seed: object) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if _is_int(seed) and seed >= 0:
        return np.random.SeedSequence(int(seed))
    raise SynthError(f"seed must be a non-negative int or a numpy SeedSequence, got {seed!r}")


def anomaly_kinds(machine_type: str) -> tuple[str, ...]:
    """The fault kinds of a machine type, in the order `generate_dataset` cycles through them."""
    return machine_model(machine_type).anomaly_kinds


def render(
    machine_type: str,
    machine_id: str,
    *,
    anomaly: str | None,
    seed: int | np.random.SeedSequence,
    duration: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    snr_db: Snr | None = None,
) -> Rendered:
    """`render_clip` with the clip's severity and SNR beside its audio."""
    model = machine_model(machine_type)
    _check_id(machine_id)
    _check_anomaly(model, machine_type, anomaly)
    _check_audio_args(duration, sample_rate)
    return model.render(
        machine_id,
        anomaly=anomaly,
        seq=_seed_sequence(seed),
        duration=float(duration),
        sample_rate=int(sample_rate),
        snr_db=check_snr(snr_db),
    )


def render_clip(
    machine_type: str,
    machine_id: str,
    *,
    anomaly: str | None,
    seed: int | np.random.SeedSequence,
    duration: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    snr_db: Snr | None = None,
) -> np.ndarray:
    """One mono clip, float32 in [-1, 1], shape (round(duration * sample_rate),).

    `anomaly=None` renders a normal clip, otherwise one of the machine type's
    anomaly kinds (`anomaly_kinds(machine_type)`) at a severity drawn from
    the seed. A seed's anomalous clip is its normal clip plus the fault: same
    timing and noises (for the slider's ``speed`` and ``stall`` the timing is
    the fault). `snr_db` is the ratio of the ID's nominal machine level to the
    background: a number of dB, a (low, high) range drawn uniformly per clip,
    or None for the family's own (the slider: the ID's own, 3-9 dB; the
    others: -6 to +6 dB per clip). Raises SynthError (a ValueError) for an
    unknown machine type or anomaly kind, an ID that is not two digits, or
    out-of-range numbers.
    """
    return render(
        machine_type,
        machine_id,
        anomaly=anomaly,
        seed=seed,
        duration=duration,
        sample_rate=sample_rate,
        snr_db=snr_db,
    ).audio


def clip_seed(
    model: MachineModel, seed: int, machine_id: str, split: str, index: int
) -> np.random.SeedSequence:
    """The seed sequence of one clip of a data set."""
    # One stream per clip: train clips do not depend on how many test clips
    # are asked for, nor on the other IDs.
    return np.random.SeedSequence([int(seed), int(machine_id), _SPLITS[split], int(index), *model.stream_key])


def generate_dataset(
    out: str | os.PathLike[str],
    *,
    machine_type: str = "slider",
    ids: Sequence[str] = ("00", "02", "04", "06"),
    n_train: int = 300,
    n_test_normal: int = 100,
    n_test_anomaly: int = 100,
    seed: int = 0,
    duration: float = 10.0,
    sample_rate: int = SAMPLE_RATE,
    snr_db: Snr | None = None,
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
    stream from (seed, machine type, ID, split, index): the same arguments
    give byte-identical files, and a clip does not depend on the counts asked
    for. `snr_db` as in `render_clip`; None takes the family's default for a
    data set (the slider: 6 dB; the others: -6 to +6 dB per clip).
    `progress(done, total)` is called after each file written. Raises
    SynthError (a ValueError) before writing anything for a bad argument.
    """
    model = machine_model(machine_type)
    if isinstance(ids, str):  # a str is a Sequence[str] of characters
        raise SynthError(
            f"ids must be a sequence of two-digit IDs such as ('00', '02'), not the string {ids!r}"
        )
    ids = tuple(_check_id(i) for i in ids)
    if not ids or len(set(ids)) != len(ids):
        raise SynthError(f"ids must name at least one machine ID, each once, got {ids}")
    kinds = tuple(model.anomaly_kinds if anomaly_kinds is None else anomaly_kinds)
    for requested in kinds:
        _check_anomaly(model, machine_type, requested)
    if not kinds or len(set(kinds)) != len(kinds):
        raise SynthError(f"anomaly_kinds must name at least one kind, each once, got {kinds}")
    for name, count in (
        ("n_train", n_train),
        ("n_test_normal", n_test_normal),
        ("n_test_anomaly", n_test_anomaly),
    ):
        if not _is_int(count) or count < 0:
            raise SynthError(f"{name} must be a non-negative integer, got {count!r}")
    if not _is_int(seed) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
    _check_audio_args(duration, sample_rate)
    snr = check_snr(snr_db)
    snr = model.default_snr if snr is None else snr

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
            seq=clip_seed(model, seed, mid, split, index),
            duration=float(duration),
            sample_rate=int(sample_rate),
            snr_db=snr,
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

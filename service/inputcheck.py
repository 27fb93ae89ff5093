"""Input checks: does an upload look like the audio the model learned from?

A reconstruction score cannot tell a fault from a changed microphone: a
preamp set 10 dB hotter makes every clip "anomalous". So beside the decision
the service reports how the clip's level, clipping, silence, DC offset and
bandwidth compare with the training audio's `Fingerprint` (stored in
threshold.json at fit time). The decision is still given: a louder machine
may be the fault itself.

Both sides use this module: training builds the fingerprint from the
`ClipStats` of its clips, the service computes the same `ClipStats` for an
upload and `check`s them against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FindingCode = Literal["level_offset", "clipping", "silence", "dc_offset", "band_limited"]
FINDING_CODES: tuple[FindingCode, ...] = ("level_offset", "clipping", "silence", "dc_offset", "band_limited")


# The log-mel floor, 10 * log10(amin) with the features' default amin = 1e-10.
BAND_FLOOR_DB = -100.0
# A clip's level when it is all zeros (a finite number, so that JSON can carry it).
LEVEL_FLOOR_DB = -200.0
# |x| from which a sample counts as clipped: PCM full scale is 32767/32768 = 0.99997, and a
# float file may go beyond 1.0.
CLIP_SAMPLE = 0.999
# Silence is judged per window of this length: long enough for a level, short enough for a dropout.
SILENCE_WINDOW_S = 0.05
# A window is silent below this absolute level (16-bit quantisation noise is about -101 dB FS) ...
SILENCE_DBFS = -90.0
# ... or this far below the clip's own level (a dropout to the noise floor of a hot recording).
SILENCE_BELOW_LEVEL_DB = 60.0
# A band has content this far above the floor (16-bit quantisation noise alone gives about -88 dB).
CONTENT_ABOVE_FLOOR_DB = 20.0


@dataclass(frozen=True)
class ClipStats:
    """What one clip looks like, before any standardisation.

    `band_db` has shape (n_mels,): the clip's mean log-mel level per mel band
    in dB, on the features' own scale (`service.features.log_mel`), whose
    floor is `floor_db`; `band_hz` (n_mels,) holds the bands' centres.
    `level_db` is the RMS of the clip with its DC offset removed, dB re full
    scale; `dc_offset` the signed mean; `clipping_rate` the fraction of
    samples at full scale; `silence_fraction` the fraction of silent 50 ms
    windows; `bandwidth_hz` the centre of the highest band with content.
    """

    level_db: float
    band_db: np.ndarray
    clipping_rate: float
    silence_fraction: float
    dc_offset: float
    bandwidth_hz: float
    floor_db: float = BAND_FLOOR_DB
    band_hz: np.ndarray | None = None  # to say where content is missing; `check` needs it for that


def clip_stats(
    samples: np.ndarray,
    band_db: np.ndarray,
    *,
    sample_rate: int,
    mel_hz: np.ndarray,
    floor_db: float = BAND_FLOOR_DB,
) -> ClipStats:
    """Stats of a mono waveform `samples` (float, full scale 1.0) and its mean log-mel per band.

    Parameters
    ----------
    samples : np.ndarray [shape=(n,)], float
        The decoded clip; values beyond 1.0 (a float file) count as clipped.
    band_db : np.ndarray [shape=(n_mels,)]
        Mean log-mel level per band in dB (`log_mel(samples).mean(axis=1)`).
    sample_rate : int
        Rate of `samples`, for the silence windows.
    mel_hz : np.ndarray [shape=(n_mels,)]
        Each mel band's centre frequency, for `bandwidth_hz`.
    floor_db : float
        The log-mel floor, `10 * log10(amin)`.
    """
    x = np.asarray(samples)
    bands = np.asarray(band_db, dtype=np.float64)
    centres = np.asarray(mel_hz, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty mono signal of shape (n,), got shape {x.shape}")
    if bands.ndim != 1 or bands.shape != centres.shape:
        raise ValueError(f"band_db {bands.shape} and mel_hz {centres.shape} must be of one shape (n_mels,)")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    dc = float(np.mean(x, dtype=np.float64))
    clipped = np.count_nonzero(x >= CLIP_SAMPLE) + np.count_nonzero(x <= -CLIP_SAMPLE)
    window_power, total_power = _window_powers(x, dc=dc, width=max(1, round(SILENCE_WINDOW_S * sample_rate)))
    # The level is the RMS without the DC offset: an offset is reported as one, not as a level change.
    level_db = max(LEVEL_FLOOR_DB, 10.0 * float(np.log10(max(total_power, 1e-300))))
    quiet = max(10.0 ** (SILENCE_DBFS / 10.0), 10.0 ** ((level_db - SILENCE_BELOW_LEVEL_DB) / 10.0))
    content = np.flatnonzero(bands > floor_db + CONTENT_ABOVE_FLOOR_DB)
    return ClipStats(
        level_db=level_db,
        band_db=bands,
        clipping_rate=clipped / x.size,
        silence_fraction=float(np.count_nonzero(window_power < quiet)) / window_power.size,
        dc_offset=dc,
        bandwidth_hz=float(centres[content[-1]]) if content.size else 0.0,
        floor_db=float(floor_db),
        band_hz=centres,
    )


def _window_powers(x: np.ndarray, *, dc: float, width: int) -> tuple[np.ndarray, float]:
    """Variance of `x` per window of `width` samples, shape (n // width,), and the power of `x - dc`.

    Each window loses its own mean, so that zeros in a clip with a DC offset
    still count as silence. A clip shorter than one window is one window.
    Blocks of windows keep the float64 temporaries small for a long upload.
    """
    n_windows = max(1, x.size // width)
    width = min(width, x.size)
    powers = np.empty(n_windows, dtype=np.float64)
    total = 0.0
    per_block = max(1, (1 << 16) // width)
    for first in range(0, n_windows, per_block):
        last = min(n_windows, first + per_block)
        block = x[first * width : last * width].astype(np.float64) - dc
        powers[first:last] = np.var(block.reshape(last - first, width), axis=1)
        total += float(np.square(block).sum())
    rest = x[n_windows * width :].astype(np.float64) - dc
    return powers, (total + float(np.square(rest).sum())) / x.size


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FingerprintPart(_Strict):
    """The training clips' stats (of one machine ID, or of all)."""

    n_clips: int = Field(gt=0)
    level_db: tuple[float, float] = Field(
        description="Mean and standard deviation of the clips' level (RMS without DC), dB FS."
    )
    band_db: list[float] = Field(description="Mean level per mel band, dB.")
    clipping_rate: float = Field(ge=0, le=1, description="Highest fraction of clipped samples in a clip.")
    silence_fraction: float = Field(ge=0, le=1, description="Highest fraction of silent windows in a clip.")
    dc_offset: float = Field(ge=0, description="Highest |mean| of a clip, full scale 1.0.")
    bandwidth_hz: float = Field(ge=0, description="Lowest bandwidth of a clip.")


class Fingerprint(FingerprintPart):
    """The training audio as a whole, and each machine ID's own part."""

    per_id: dict[str, FingerprintPart] | None = None

    def for_id(self, machine_id: str | None) -> FingerprintPart:
        if machine_id is not None and self.per_id and machine_id in self.per_id:
            return self.per_id[machine_id]
        return self


def build_fingerprint(stats: Sequence[ClipStats], machine_ids: Sequence[str]) -> Fingerprint:
    """The fingerprint of training clips: `stats[i]` belongs to machine ID `machine_ids[i]`.

    Each clip's `band_db` has shape (n_mels,). The per-ID parts are kept only
    when there are at least two IDs: with one, they would repeat the whole.
    """
    if len(stats) != len(machine_ids):
        raise ValueError(f"{len(stats)} clip stats but {len(machine_ids)} machine IDs")
    if not stats:
        raise ValueError("no training clips to build a fingerprint from")
    shapes = {np.shape(s.band_db) for s in stats}
    if len(shapes) != 1:
        raise ValueError(f"the clips' band_db differ in shape: {sorted(shapes)}")
    groups: dict[str, list[ClipStats]] = {}
    for item, machine_id in zip(stats, machine_ids, strict=True):
        groups.setdefault(str(machine_id), []).append(item)
    per_id = {key: _part(groups[key]) for key in sorted(groups)} if len(groups) > 1 else None
    return Fingerprint(**_part(stats).model_dump(), per_id=per_id)


def _part(stats: Sequence[ClipStats]) -> FingerprintPart:
    levels = np.array([s.level_db for s in stats], dtype=np.float64)
    bands = np.mean([np.asarray(s.band_db, dtype=np.float64) for s in stats], axis=0)
    return FingerprintPart(
        n_clips=len(stats),
        level_db=(float(levels.mean()), float(levels.std())),
        # 0.01 dB is far below any limit and keeps threshold.json short.
        band_db=[round(float(b), 2) for b in bands],
        clipping_rate=max(float(s.clipping_rate) for s in stats),
        silence_fraction=max(float(s.silence_fraction) for s in stats),
        dc_offset=max(abs(float(s.dc_offset)) for s in stats),
        bandwidth_hz=min(float(s.bandwidth_hz) for s in stats),
    )


class Finding(_Strict):
    code: FindingCode
    message: str = Field(description="What was found and what it may mean, for a person.")
    value: float = Field(description="The measured quantity, e.g. dB away from the training level.")


class InputCheck(_Strict):
    status: Literal["ok", "warning", "unchecked"] = Field(
        description="`warning` when there is at least one finding; `unchecked`: the model has no fingerprint."
    )
    findings: list[Finding] = Field(default_factory=list)


@dataclass(frozen=True)
class CheckLimits:
    """Where a difference becomes a finding (`ASD_LEVEL_OFFSET_DB` sets the first).

    The training clips' own spread widens the level tolerance, so that a
    training set recorded at varying levels does not warn about itself.
    Clipping, silence and DC offset are compared with the worst training clip.
    """

    level_offset_db: float = 6.0
    level_spread_sd: float = 3.0
    clipping_min_rate: float = 1e-4
    clipping_factor: float = 10.0
    silence_margin: float = 0.05
    dc_offset_min: float = 0.01
    dc_offset_factor: float = 3.0
    band_deficit_db: float = 30.0
    band_min_bands: int = 3


# A band takes part in the bandwidth check only if a deficit of `band_deficit_db` would
# still leave it this far above the floor: below that, missing and quiet look alike.
_BAND_MARGIN_DB = 5.0


def check(
    stats: ClipStats,
    fingerprint: Fingerprint,
    *,
    machine_id: str | None = None,
    limits: CheckLimits = CheckLimits(),
) -> InputCheck:
    """Compare one clip with the training audio (of `machine_id` when the fingerprint has it).

    `stats.band_db` and the fingerprint's `band_db` must have one shape
    (n_mels,). Findings come in the order of `FINDING_CODES`; they never
    change the decision, which the caller makes from the score alone.
    """
    part = fingerprint.for_id(machine_id)
    whose = f" of machine ID {machine_id}" if part is not fingerprint else ""
    findings: list[Finding] = []

    offset = stats.level_db - part.level_db[0]
    if abs(offset) > max(limits.level_offset_db, limits.level_spread_sd * part.level_db[1]):
        causes = (
            "or the fault itself"
            if offset > 0
            else ("a loose cable, a machine not running, or the fault itself")
        )
        findings.append(
            Finding(
                code="level_offset",
                value=offset,
                message=(
                    f"The clip is {abs(offset):.1f} dB {'louder' if offset > 0 else 'quieter'} than the training "
                    f"recordings{whose}: a gain or microphone change, {causes}."
                ),
            )
        )

    if stats.clipping_rate > max(limits.clipping_min_rate, limits.clipping_factor * part.clipping_rate):
        findings.append(
            Finding(
                code="clipping",
                value=stats.clipping_rate,
                message=(
                    f"{100 * stats.clipping_rate:.2f} % of the samples are at full scale (training "
                    f"recordings{whose}: at most {100 * part.clipping_rate:.2f} %): the input gain is too high and "
                    "the sound is distorted."
                ),
            )
        )

    if stats.silence_fraction > part.silence_fraction + limits.silence_margin:
        findings.append(
            Finding(
                code="silence",
                value=stats.silence_fraction,
                message=(
                    f"{100 * stats.silence_fraction:.0f} % of the clip is silent (training recordings{whose}: "
                    f"at most {100 * part.silence_fraction:.0f} %): a dropout, a loose cable or a dead microphone."
                ),
            )
        )

    if abs(stats.dc_offset) > max(limits.dc_offset_min, limits.dc_offset_factor * part.dc_offset):
        findings.append(
            Finding(
                code="dc_offset",
                value=stats.dc_offset,
                message=(
                    f"The waveform is offset by {stats.dc_offset:+.3f} of full scale (training recordings{whose}: "
                    f"at most {part.dc_offset:.3f}): a faulty microphone supply, preamp or sound card."
                ),
            )
        )

    missing = _missing_above(stats, np.asarray(part.band_db, dtype=np.float64), limits)
    if missing is not None:
        missing_hz, trained_hz = missing
        findings.append(
            Finding(
                code="band_limited",
                value=missing_hz,
                message=(
                    f"The clip has no sound above {missing_hz / 1000:.1f} kHz, where the training recordings{whose} "
                    f"have sound up to {trained_hz / 1000:.1f} kHz: a recording at a lower sample rate (e.g. 8 kHz) "
                    "resampled, or a low-pass filter in the recording chain."
                ),
            )
        )

    return InputCheck(status="warning" if findings else "ok", findings=findings)


def _missing_above(stats: ClipStats, train_db: np.ndarray, limits: CheckLimits) -> tuple[float, float] | None:
    """(Hz from which the clip lacks the bands training had, training's highest such band), or None.

    `train_db` has shape (n_mels,). The clip's overall offset is the median
    difference over the bands both have content in, so that a gain change,
    which moves every band alike, never counts as missing bands.
    """
    clip_db = np.asarray(stats.band_db, dtype=np.float64)
    if clip_db.shape != train_db.shape:
        raise ValueError(f"the clip has {clip_db.shape} bands, the fingerprint {train_db.shape}")
    if stats.band_hz is None:
        return None  # stats not made by `clip_stats`: no frequencies to report
    floor = stats.floor_db
    # A deficit can only be seen in a band this far above the floor.
    seen_above = floor + limits.band_deficit_db + _BAND_MARGIN_DB
    audible = train_db > seen_above
    basis = audible & (clip_db > floor + CONTENT_ABOVE_FLOOR_DB)
    if np.count_nonzero(basis) < limits.band_min_bands:
        return None  # nothing left to compare: the silence and level checks speak for such a clip
    offset = float(np.median(clip_db[basis] - train_db[basis]))
    eligible = np.flatnonzero(audible & (train_db + offset > seen_above))
    deficit = clip_db[eligible] - train_db[eligible] - offset
    run = 0  # missing bands counted down from the highest eligible one
    while run < eligible.size and deficit[eligible.size - 1 - run] < -limits.band_deficit_db:
        run += 1
    if run < limits.band_min_bands:
        return None
    return float(stats.band_hz[eligible[eligible.size - run]]), float(stats.band_hz[eligible[-1]])

"""Score one upload with one detector: decode, score, group patch errors into segments.

Everything here is blocking CPU work; the routes run it in a worker thread.
The threshold is chosen first (`choose_threshold`: the machine ID's own fit or
the model-wide one, at the calibrated or an asked-for false-alarm rate), so a
request that names an unknown ID fails before its audio is decoded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from service.audio import Channel, read_audio
from service.bundle import Bundle, normalize_machine_id
from service.detector import Detector, Score, check_finite
from service.errormap import error_map
from service.errors import FalseAlarmRateUnavailableError, ThresholdChoiceError, UnknownMachineIdError
from service.inputcheck import CheckLimits, InputCheck, check, clip_stats
from service.schemas import ClipInfo, Detail, ScoreResult, Segment

__all__ = [
    "ChosenThreshold",
    "FalseAlarmRateUnavailableError",
    "ThresholdChoiceError",
    "ThresholdScope",
    "UnknownMachineIdError",
    "choose_threshold",
    "group_segments",
    "input_check",
    "normalize_machine_id",
    "score_upload",
]

ThresholdScope = Literal["machine_id", "model"]


@dataclass(frozen=True)
class ChosenThreshold:
    """The threshold one request decides with, and where it came from."""

    value: float
    scope: ThresholdScope
    machine_id: str | None
    false_alarm_rate: float


def choose_threshold(
    bundle: Bundle, *, machine_id: str | None = None, false_alarm_rate: float | None = None
) -> ChosenThreshold:
    """The threshold for `machine_id` (normalised) at `false_alarm_rate` (None: the calibrated one).

    An ID without its own fit uses the model-wide one. Raises `UnknownMachineIdError`
    for an ID the model was not trained on, `FalseAlarmRateUnavailableError` when the
    fit cannot give a threshold for the rate (no curve, or outside its range).
    """
    per_id = bundle.threshold.per_id or {}
    if machine_id is not None and machine_id not in bundle.machine_ids and machine_id not in per_id:
        known = ", ".join(dict.fromkeys([*bundle.machine_ids, *per_id])) or "none"
        raise UnknownMachineIdError(
            f"machine ID {machine_id!r} is not one this model knows; known IDs: {known}"
        )
    fit = bundle.threshold.for_id(machine_id)
    scope: ThresholdScope = "machine_id" if machine_id in per_id else "model"
    try:
        value = fit.threshold_for(false_alarm_rate)
    except ValueError as error:
        where = f"machine ID {machine_id}" if scope == "machine_id" else "the model-wide threshold"
        raise FalseAlarmRateUnavailableError(f"{where}: {error}") from None
    # Rounded: 1 - 0.9 is 0.09999999999999998.
    rate = round(fit.target_false_alarm_rate, 12) if false_alarm_rate is None else false_alarm_rate
    if not (math.isfinite(value) and value > 0):
        # Decisions and ratios need a positive threshold; a gamma fit with a
        # negative location can give one below zero at high rates.
        raise FalseAlarmRateUnavailableError(
            f"the calibration gives no positive threshold at a false-alarm rate of {rate:g}"
        )
    return ChosenThreshold(value=value, scope=scope, machine_id=machine_id, false_alarm_rate=rate)


def score_upload(
    model: str,
    detector: Detector,
    source: bytes | bytearray | BinaryIO,
    *,
    channel: Channel = 0,
    filename: str | None = None,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
    segment_seconds: float = 1.0,
    threshold: ChosenThreshold | None = None,
    limits: CheckLimits | None = None,
    detail: Detail = "none",
) -> ScoreResult:
    """The API answer for one clip; raises an `AudioError` for unusable audio.

    `threshold` defaults to the model-wide calibrated one (`choose_threshold`), `limits` to
    `CheckLimits()`; `detail="map"` adds the log-mel and error map (`service.errormap`).
    """
    started = time.perf_counter()
    chosen = threshold if threshold is not None else choose_threshold(detector.bundle)
    rate = detector.params.sample_rate
    clip = read_audio(
        source,
        sample_rate=rate,
        channel=channel,
        # Refuse a clip too short for one patch before resampling it.
        min_seconds=max(min_seconds, detector.min_samples / rate),
        max_seconds=max_seconds,
    )
    # A NaN score would answer score null and decision "normal".
    with_map = detail == "map"
    scored = check_finite(detector.score(clip.samples, machine_id=chosen.machine_id, error_map=with_map))
    checked = input_check(
        detector, clip.samples, scored, machine_id=chosen.machine_id, limits=limits or CheckLimits()
    )
    value = chosen.value
    hop_seconds = detector.hop * detector.params.hop_length / rate
    segments = group_segments(
        scored,
        duration=clip.samples.size / rate,
        threshold=value,
        # Never shorter than the patch hop, or some segments would hold no patch.
        seconds=max(segment_seconds, hop_seconds),
    )
    return ScoreResult(
        model=model,
        machine_id=chosen.machine_id,
        score=scored.score,
        components=scored.components,
        threshold=value,
        threshold_scope=chosen.scope,
        false_alarm_rate=chosen.false_alarm_rate,
        ratio=scored.score / value,
        # The same comparison as Detector.is_anomalous, with the chosen threshold.
        decision="anomalous" if scored.score > value else "normal",
        input_check=checked,
        clip=ClipInfo(
            filename=filename,
            duration_s=round(clip.duration, 6),
            sample_rate=clip.sample_rate,
            source_sample_rate=clip.source_sample_rate,
            channels=clip.channels,
            channel=channel,
            format=clip.format,
            subtype=clip.subtype,
        ),
        segments=segments,
        worst_segment=next(s.index for s in segments if s.worst),
        n_patches=int(scored.patch_errors.size),
        map=error_map(scored, mel_hz=detector.mel_hz, seconds_per_frame=detector.params.hop_length / rate)
        if with_map
        else None,
        processing_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def input_check(
    detector: Detector, samples: np.ndarray, scored: Score, *, machine_id: str | None, limits: CheckLimits
) -> InputCheck:
    """How the clip compares with the training audio; `unchecked` for a bundle without a fingerprint.

    The stats come from the decoded samples and the log-mel the score already
    computed: no second pass over the audio.
    """
    fingerprint = detector.bundle.fingerprint
    if fingerprint is None or scored.band_db is None:
        return InputCheck(status="unchecked")
    rate = detector.params.sample_rate
    stats = clip_stats(
        samples, scored.band_db, sample_rate=rate, mel_hz=detector.mel_hz, floor_db=detector.params.floor_db
    )
    return check(stats, fingerprint, machine_id=machine_id, limits=limits)


def group_segments(scored: Score, *, duration: float, threshold: float, seconds: float) -> list[Segment]:
    """Mean patch error per `seconds`-long segment, a patch counting where its centre lies.

    A dense model has hundreds of overlapping patches per clip; a few
    segments say where the anomaly is without sending them all. Segments
    that no patch centre falls in (the first half patch) are left out.
    """
    centres = (scored.patch_start + scored.patch_end) / 2
    index = np.floor(centres / seconds).astype(np.int64)
    # A stable sort makes each segment's patches one run, in their own order: each run's mean
    # is then the mean a boolean selection per segment would give, to the bit, at a third less cost.
    order = np.argsort(index, kind="stable")
    index = index[order]
    values = scored.segment_values[order]
    firsts = [0, *(np.flatnonzero(index[1:] != index[:-1]) + 1).tolist()]
    segments = []
    for position, (first, last) in enumerate(zip(firsts, [*firsts[1:], index.size], strict=True)):
        k = int(index[first])
        value = float(values[first:last].mean())
        segments.append(
            Segment(
                index=position,
                start_s=round(k * seconds, 6),
                end_s=round(min((k + 1) * seconds, duration), 6),
                score=value,
                ratio=value / threshold,
                n_patches=last - first,
                worst=False,
            )
        )
    worst = max(range(len(segments)), key=lambda i: segments[i].score)
    segments[worst].worst = True
    return segments

"""Score one upload with one detector: decode, score, group patch errors into segments.

Everything here is blocking CPU work; the routes run it in a worker thread.
"""

from __future__ import annotations

import time
from typing import BinaryIO

import numpy as np

from service.audio import Channel, InvalidAudio, read_audio
from service.detector import Detector, Score
from service.schemas import ClipInfo, ScoreResult, Segment


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
) -> ScoreResult:
    """The API answer for one clip; raises `AudioError` or `ClipTooShort` for unusable audio."""
    started = time.perf_counter()
    rate = detector.params.sample_rate
    clip = read_audio(
        source,
        sample_rate=rate,
        channel=channel,
        # Refuse a clip too short for one patch before resampling it.
        min_seconds=max(min_seconds, detector.min_samples / rate),
        max_seconds=max_seconds,
    )
    scored = detector.score(clip.samples)
    if not np.isfinite(scored.patch_errors).all():
        # Finite float samples far beyond full scale (e.g. 1e30) overflow the float32
        # spectrogram; NaN would answer score null and decision "normal".
        raise InvalidAudio("the audio gives no finite anomaly score: samples far beyond full scale?")
    threshold = detector.threshold
    hop_seconds = detector.hop * detector.params.hop_length / rate
    segments = group_segments(
        scored,
        duration=clip.samples.size / rate,
        threshold=threshold,
        # Never shorter than the patch hop, or some segments would hold no patch.
        seconds=max(segment_seconds, hop_seconds),
    )
    return ScoreResult(
        model=model,
        score=scored.score,
        threshold=threshold,
        ratio=scored.score / threshold,
        decision="anomalous" if detector.is_anomalous(scored.score) else "normal",
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
        processing_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def group_segments(scored: Score, *, duration: float, threshold: float, seconds: float) -> list[Segment]:
    """Mean patch error per `seconds`-long segment, a patch counting where its centre lies.

    A dense model has hundreds of overlapping patches per clip; a few
    segments say where the anomaly is without sending them all. Segments
    that no patch centre falls in (the first half patch) are left out.
    """
    centres = (scored.patch_start + scored.patch_end) / 2
    index = np.floor(centres / seconds).astype(np.int64)
    segments = []
    for position, k in enumerate(np.unique(index)):
        errors = scored.patch_errors[index == k]
        value = float(errors.mean())
        segments.append(
            Segment(
                index=position,
                start_s=round(float(k * seconds), 6),
                end_s=round(float(min((k + 1) * seconds, duration)), 6),
                score=value,
                ratio=value / threshold,
                n_patches=int(errors.size),
                worst=False,
            )
        )
    worst = max(range(len(segments)), key=lambda i: segments[i].score)
    segments[worst].worst = True
    return segments

"""Audio in: bytes or a file, any format libsndfile reads, to a mono float32 clip.

Training reads its recordings through the same function the service uses
for uploads, so a clip is decoded, mixed down and resampled the same way on
both sides.

Its errors (`AudioError` and the classes under it) are defined in
`service.errors`, which draws the service's whole error tree, and re-exported
here.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf
import soxr

from service.errors import (
    AudioError,
    AudioLengthError,
    AudioTooLongError,
    AudioTooShortError,
    EmptyAudioError,
    InvalidAudioError,
    InvalidChannelError,
    UndecodableAudioError,
)

__all__ = [
    "MAX_CHANNELS",
    "AudioError",
    "AudioLengthError",
    "AudioTooLongError",
    "AudioTooShortError",
    "Channel",
    "Clip",
    "EmptyAudioError",
    "InvalidAudioError",
    "InvalidChannelError",
    "UndecodableAudioError",
    "read_audio",
]

Channel = int | Literal["mean"]

MAX_CHANNELS = 64


@dataclass(frozen=True)
class Clip:
    """A decoded recording, reduced to one channel at the requested rate.

    `samples` has shape (n,), float32; the other fields describe the source.
    """

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    channels: int
    duration: float
    format: str
    subtype: str


def read_audio(
    source: bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO,
    *,
    sample_rate: int,
    channel: Channel = 0,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
) -> Clip:
    """Decode `source`, pick `channel` (or the mean of all), resample to `sample_rate`.

    Multi-channel recordings take channel 0 by default, as DCASE 2020 did
    with MIMII's 8-microphone array. The length limits are checked against
    the header before the samples are decoded, so a ten-hour upload is
    refused without decoding it.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise EmptyAudioError("the upload is empty (0 bytes)")
        source = io.BytesIO(source)
    try:
        with sf.SoundFile(source) as handle:
            info_rate, n_channels, n_frames = handle.samplerate, handle.channels, handle.frames
            fmt, subtype = handle.format, handle.subtype
            _check_layout(n_channels, channel, info_rate)
            if n_frames <= 0:
                raise EmptyAudioError("the audio holds no samples")
            declared = n_frames / info_rate
            if max_seconds is not None and declared > max_seconds:
                raise AudioTooLongError(f"audio is {declared:.2f} s long; the limit is {max_seconds:g} s")
            mono = _read_mono(handle, channel)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise UndecodableAudioError(f"cannot decode audio: {_reason(error)}") from None
    if mono.size == 0:
        # A header may promise samples that the body does not hold.
        raise EmptyAudioError("the audio holds no samples")
    duration = mono.size / info_rate
    if duration < min_seconds:
        raise AudioTooShortError(f"audio is {duration:.3f} s long; at least {min_seconds:g} s is needed")
    if info_rate != sample_rate:
        # soxr at high quality is what librosa.load uses by default.
        mono = soxr.resample(mono, info_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return Clip(
        samples=mono,
        sample_rate=sample_rate,
        source_sample_rate=info_rate,
        channels=n_channels,
        duration=duration,
        format=fmt,
        subtype=subtype,
    )


def _check_layout(n_channels: int, channel: Channel, rate: int) -> None:
    if n_channels < 1 or n_channels > MAX_CHANNELS:
        raise InvalidAudioError(f"audio has {n_channels} channels; at most {MAX_CHANNELS} are accepted")
    if rate < 1000 or rate > 384000:
        raise InvalidAudioError(f"sample rate {rate} Hz is outside 1000..384000 Hz")
    if channel == "mean":
        return
    if not isinstance(channel, int) or not 0 <= channel < n_channels:
        raise InvalidChannelError(
            f"channel {channel!r} does not exist; the audio has {n_channels} channel(s)"
        )


_BLOCK_FRAMES = 1 << 16
# The most frames the output is sized for up front; a header that claims more
# (or none: some formats do not say) grows it as the samples arrive.
_INITIAL_FRAMES_CAP = 1 << 24

# Integer subtypes whose samples libsndfile turns into float32 as
# `sample * 2**-(bits - 1)` (read as int16, or int32 for 24 and 32 bits).
# Reading the integers and converting only the kept channel gives the same
# float32 values bit for bit (tests/bench/test_equivalence.py), without
# libsndfile's slower conversion of every channel and with no NaN check needed:
# 8 x cheaper for MIMII's 8-channel PCM_16 files, 5 x for mono.
_INTEGER_SUBTYPES: dict[str, tuple[type[np.integer], np.float32]] = {
    "PCM_16": (np.int16, np.float32(2.0**-15)),
    "PCM_24": (np.int32, np.float32(2.0**-31)),
    "PCM_32": (np.int32, np.float32(2.0**-31)),
}


def _read_mono(handle: sf.SoundFile, channel: Channel) -> np.ndarray:
    """Decode block by block, keeping only the wanted channel (or the mean).

    Decoding everything first would hold frames x channels float32 values:
    a small FLAC of 64 silent channels at 384 kHz for 300 s would expand to
    about 30 GB. Per block, only the one channel that is kept grows. The
    result is the same as selecting from a whole-file read: the per-frame
    mean and the channel pick do not depend on the block boundaries. Each
    block is read into one reused buffer and written straight into the
    output, so the clip is not copied again at the end.
    """
    integer = _INTEGER_SUBTYPES.get(handle.subtype)
    dtype, scale = integer if integer is not None else (np.float32, None)
    declared = max(0, handle.frames)
    buffer = np.empty((max(1, min(_BLOCK_FRAMES, declared)), handle.channels), dtype=dtype)
    mono = np.empty(min(declared, _INITIAL_FRAMES_CAP), dtype=np.float32)
    filled = 0
    while True:
        block = handle.read(out=buffer)
        n = block.shape[0]
        if n == 0:
            break
        if filled + n > mono.size:  # more samples than the header declared (or than the first guess)
            grown = np.empty(max(filled + n, 2 * mono.size), dtype=np.float32)
            grown[:filled] = mono[:filled]
            mono = grown
        target = mono[filled : filled + n]
        if scale is None:
            if not np.isfinite(block).all():
                raise InvalidAudioError("the audio contains NaN or infinite samples")
            if channel == "mean":
                np.mean(block, axis=1, out=target)
            else:
                target[...] = block[:, channel]
        elif channel == "mean" and block.dtype == np.int16:
            # The sum of up to 64 16-bit samples is exact in int32 and in float32,
            # so this is the float32 mean to the bit, 4 x cheaper than np.mean.
            total = block[:, 0].astype(np.int32)
            for column in range(1, block.shape[1]):
                total += block[:, column]
            np.multiply(total, scale, out=target, dtype=np.float32)
            target /= np.float32(block.shape[1])
        elif channel == "mean":
            np.mean(np.multiply(block, scale, dtype=np.float32), axis=1, out=target)
        else:
            np.multiply(block[:, channel], scale, out=target, dtype=np.float32)
        filled += n
        if n < buffer.shape[0]:
            break
    return mono[:filled]


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    # libsndfile messages name an internal file object; keep only the reason.
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text

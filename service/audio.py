"""Audio in: bytes or a file, any format libsndfile reads, to a mono float32 clip.

Training reads its recordings through the same function the service uses
for uploads, so a clip is decoded, mixed down and resampled the same way on
both sides.

Errors form one hierarchy, each with a stable `code` for API answers::

    AudioError
    ├── UndecodableAudio   not audio libsndfile can read, or corrupt
    ├── EmptyAudio         decodes to zero samples
    ├── InvalidAudio       NaN/inf samples, too many channels, odd sample rate
    │   └── InvalidChannel the requested channel does not exist in the audio
    └── AudioLengthError   shorter or longer than the caller allows
        ├── AudioTooShort
        └── AudioTooLong
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf
import soxr

Channel = int | Literal["mean"]

MAX_CHANNELS = 64


class AudioError(ValueError):
    code = "invalid_audio"


class UndecodableAudio(AudioError):
    code = "undecodable_audio"


class EmptyAudio(AudioError):
    code = "empty_audio"


class InvalidAudio(AudioError):
    code = "invalid_audio"


class InvalidChannel(InvalidAudio):
    """The audio is fine but has no such channel: the caller asked for the wrong one."""

    code = "invalid_channel"


class AudioLengthError(AudioError):
    code = "audio_length"


class AudioTooShort(AudioLengthError):
    code = "audio_too_short"


class AudioTooLong(AudioLengthError):
    code = "audio_too_long"


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
    source: bytes | str | os.PathLike | BinaryIO,
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
            raise EmptyAudio("the upload is empty (0 bytes)")
        source = io.BytesIO(source)
    try:
        with sf.SoundFile(source) as handle:
            info_rate, n_channels, n_frames = handle.samplerate, handle.channels, handle.frames
            fmt, subtype = handle.format, handle.subtype
            _check_layout(n_channels, channel, info_rate)
            if n_frames <= 0:
                raise EmptyAudio("the audio holds no samples")
            declared = n_frames / info_rate
            if max_seconds is not None and declared > max_seconds:
                raise AudioTooLong(f"audio is {declared:.2f} s long; the limit is {max_seconds:g} s")
            mono = _read_mono(handle, channel)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise UndecodableAudio(f"cannot decode audio: {_reason(error)}") from None
    if mono.size == 0:
        # A header may promise samples that the body does not hold.
        raise EmptyAudio("the audio holds no samples")
    duration = mono.size / info_rate
    if duration < min_seconds:
        raise AudioTooShort(f"audio is {duration:.3f} s long; at least {min_seconds:g} s is needed")
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
        raise InvalidAudio(f"audio has {n_channels} channels; at most {MAX_CHANNELS} are accepted")
    if rate < 1000 or rate > 384000:
        raise InvalidAudio(f"sample rate {rate} Hz is outside 1000..384000 Hz")
    if channel == "mean":
        return
    if not isinstance(channel, int) or not 0 <= channel < n_channels:
        raise InvalidChannel(f"channel {channel!r} does not exist; the audio has {n_channels} channel(s)")


_BLOCK_FRAMES = 1 << 16


def _read_mono(handle: sf.SoundFile, channel: Channel) -> np.ndarray:
    """Decode block by block, keeping only the wanted channel (or the mean).

    Decoding everything first would hold frames x channels float32 values:
    a small FLAC of 64 silent channels at 384 kHz for 300 s would expand to
    about 30 GB. Per block, only the one channel that is kept grows. The
    result is the same as selecting from a whole-file read: the per-frame
    mean and the channel pick do not depend on the block boundaries.
    """
    pieces: list[np.ndarray] = []
    while True:
        block = handle.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
        if block.shape[0] == 0:
            break
        if not np.isfinite(block).all():
            raise InvalidAudio("the audio contains NaN or infinite samples")
        pieces.append(block.mean(axis=1) if channel == "mean" else block[:, channel].copy())
        if block.shape[0] < _BLOCK_FRAMES:
            break
    if not pieces:
        return np.empty(0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


def _reason(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    # libsndfile messages name an internal file object; keep only the reason.
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text

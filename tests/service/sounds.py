"""Audio payloads for the service tests, built in memory."""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf


def noise(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)


def encode(
    samples: np.ndarray, rate: int = 16000, *, format: str = "WAV", subtype: str | None = "PCM_16"
) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def wav_header(*, channels: int, rate: int, bits: int, data_bytes: int, fmt_tag: int = 1) -> bytes:
    """A canonical 44-byte RIFF/WAVE header, with whatever values a test wants to lie about."""
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, fmt_tag, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def float_wav_with(value: float, seconds: float = 2.0) -> bytes:
    samples = noise(seconds)
    samples[len(samples) // 2] = value
    return encode(samples, subtype="FLOAT")

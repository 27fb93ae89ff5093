"""Log-mel features: the one implementation that training and serving share.

The recipe is librosa's (`librosa.feature.melspectrogram` followed by
`librosa.power_to_db` without dynamic-range clipping), re-done with a numpy
STFT so that the service never triggers numba compilation on its start-up
path. The mel filter bank comes from `librosa.filters.mel`; training packs it
into the exported model (`pack_filters`), so the service rebuilds it from the
bundle (`unpack_filters`) and needs neither librosa nor scipy at run time.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np


class FeatureError(ValueError):
    """Feature parameters or an input signal that log-mel cannot work with."""


@dataclass(frozen=True)
class FeatureParams:
    """Everything needed to turn a waveform into the model's log-mel input.

    It is stored in each exported model's `threshold.json`, so the service
    reproduces the features a model was trained on.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    power: float = 2.0
    fmin: float = 0.0
    fmax: float | None = None
    amin: float = 1e-10

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise FeatureError(f"feature sizes must be positive: {self}")
        if self.power not in (1.0, 2.0):
            raise FeatureError(f"power must be 1 (magnitude) or 2 (power), got {self.power}")
        top = self.sample_rate / 2 if self.fmax is None else self.fmax
        if not 0 <= self.fmin < top <= self.sample_rate / 2:
            raise FeatureError(f"need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
        if self.amin <= 0:
            raise FeatureError(f"amin must be positive, got {self.amin}")

    def to_dict(self) -> dict:
        return asdict(self)

    def n_frames(self, n_samples: int) -> int:
        """Frames that `log_mel` gives for a signal of `n_samples` (centred frames)."""
        return 1 + n_samples // self.hop_length


@functools.lru_cache(maxsize=16)
def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """librosa's mel filter bank, shape (n_mels, 1 + n_fft // 2), float32, read-only."""
    # Deferred import: librosa.filters pulls in scipy (about 2.5 s); only
    # training and tests pay it, the service reads packed filters instead.
    import librosa.filters

    basis = librosa.filters.mel(
        sr=params.sample_rate,
        n_fft=params.n_fft,
        n_mels=params.n_mels,
        fmin=params.fmin,
        fmax=params.fmax,
        dtype=np.float32,
    )
    basis.setflags(write=False)
    return basis


@functools.lru_cache(maxsize=16)
def _window(n_fft: int) -> np.ndarray:
    # Periodic Hann, as scipy.signal.get_window("hann", n, fftbins=True).
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    window.setflags(write=False)
    return window


def pack_filters(basis: np.ndarray) -> tuple[list[int], list[list[float]]]:
    """Each triangular mel filter as (first non-zero bin, its non-zero weights).

    A 128 x 513 filter bank has about 1,000 non-zero weights, so it fits in
    the model's JSON description; float32 values survive the round trip.
    """
    first_bins, weights = [], []
    for row in np.asarray(basis, dtype=np.float32):
        nonzero = np.flatnonzero(row)
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0)
        first_bins.append(lo)
        weights.append([float(w) for w in row[lo:hi]])
    return first_bins, weights


def unpack_filters(first_bins: list[int], weights: list[list[float]], *, n_fft: int) -> np.ndarray:
    """Inverse of `pack_filters`: shape (n_mels, 1 + n_fft // 2), float32, read-only."""
    n_bins = 1 + n_fft // 2
    basis = np.zeros((len(first_bins), n_bins), dtype=np.float32)
    for row, (lo, values) in enumerate(zip(first_bins, weights, strict=True)):
        if lo < 0 or lo + len(values) > n_bins:
            raise FeatureError(f"mel filter {row} spans bins {lo}..{lo + len(values)}, beyond {n_bins}")
        basis[row, lo : lo + len(values)] = values
    basis.setflags(write=False)
    return basis


def warm_up(params: FeatureParams) -> None:
    """Build the cached window now rather than on a first request."""
    _window(params.n_fft)


def log_mel(
    y: np.ndarray, params: FeatureParams = FeatureParams(), *, mel_basis: np.ndarray | None = None
) -> np.ndarray:
    """Log-mel spectrogram in dB.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)], float
        Mono waveform at `params.sample_rate`, roughly in [-1, 1].
    mel_basis : np.ndarray [shape=(n_mels, 1 + n_fft // 2)], optional
        A model's own filter bank; by default `mel_filterbank(params)`.

    Returns
    -------
    np.ndarray [shape=(n_mels, 1 + n // hop_length)], float32
        `10 * log10(max(mel, amin))`, the same as librosa's
        `power_to_db(melspectrogram(y, center=True, pad_mode="constant"), top_db=None)`.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise FeatureError(f"expected a mono signal of shape (n,), got shape {y.shape}")
    if y.size == 0:
        raise FeatureError("empty signal")
    y = y.astype(np.float32, copy=False)
    if not np.isfinite(y).all():
        raise FeatureError("signal contains NaN or infinite samples")

    n_fft, hop = params.n_fft, params.hop_length
    padded = np.pad(y, n_fft // 2)  # centred frames, zero padding: librosa's default
    if padded.size < n_fft:
        raise FeatureError(f"signal of {y.size} samples is shorter than one frame")
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, n_fft),
        strides=(padded.strides[0] * hop, padded.strides[0]),
        writeable=False,
    )
    spectrum = np.fft.rfft(frames * _window(n_fft), axis=1)
    magnitude = np.abs(spectrum).astype(np.float32)
    if params.power == 2.0:
        magnitude *= magnitude
    basis = mel_filterbank(params) if mel_basis is None else mel_basis
    mel = basis @ magnitude.T
    np.maximum(mel, params.amin, out=mel)
    return (10.0 * np.log10(mel)).astype(np.float32, copy=False)


def frame_windows(n_frames: int, *, frames: int, hop: int) -> np.ndarray:
    """Start frames of the patches cut from a spectrogram of `n_frames` frames.

    Returns
    -------
    np.ndarray [shape=(n_patches,)], int64
        Empty when the spectrogram is shorter than one patch.
    """
    if frames <= 0 or hop <= 0:
        raise FeatureError(f"patch frames and hop must be positive, got {frames}, {hop}")
    if n_frames < frames:
        return np.empty(0, dtype=np.int64)
    return np.arange(0, n_frames - frames + 1, hop, dtype=np.int64)


def patches(spec: np.ndarray, *, frames: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a (standardised) log-mel spectrogram into overlapping patches.

    Parameters
    ----------
    spec : np.ndarray [shape=(n_mels, t)]

    Returns
    -------
    patches : np.ndarray [shape=(n_patches, n_mels, frames)]
        A read-only view: no copy of the spectrogram is made.
    starts : np.ndarray [shape=(n_patches,)], int64
        First frame of each patch.
    """
    starts = frame_windows(spec.shape[1], frames=frames, hop=hop)
    windows = np.lib.stride_tricks.sliding_window_view(spec, frames, axis=1)
    return windows[:, starts, :].transpose(1, 0, 2), starts

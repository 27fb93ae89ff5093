"""Log-mel features: the one implementation that training and serving share.

The recipe is librosa's (`librosa.feature.melspectrogram` followed by
`librosa.power_to_db` without dynamic-range clipping), re-done with a numpy
STFT so that the service never triggers numba compilation on its start-up
path. The mel filter bank is librosa's (`librosa.filters.mel`), computed in
numpy (`mel_filterbank`); training packs it into the exported model
(`pack_filters`) and the service rebuilds it from the bundle
(`unpack_filters`), so the service imports neither librosa nor scipy.

Where the time went (10 s at 16 kHz, 313 frames; bench/ measures it):

* the FFT runs in float64: numpy 2's pocketfft is about five times slower
  on float32 input than on float64 (2.8 against 0.6 ms here), and the
  float64 FFT is now half of the clip's time. Packing two real frames into
  one complex FFT is no faster: a complex transform costs two real ones;
* the STFT runs over blocks of frames with per-thread buffers reused from
  clip to clip: fresh 2.5 MB temporaries for each clip cost more in page
  faults than the FFT itself. The power is squared in place in the
  spectrum's buffer and stored frames-major, as the FFT writes it: storing
  it as (bins, frames) cost as much again as the whole mel projection;
* the mel projection multiplies groups of adjacent triangular filters as
  small dense blocks (18 products, 3,781 of the 65,664 weights) on the
  calling thread, each small enough that OpenBLAS never hands it to a
  second thread (`MelProjection`). One product per band took 1.7 times as
  long (128 calls), numpy's vectorised sparse forms (a gather, then
  `np.add.reduceat` or a sum) 3 to 10 times. The dense `basis @ power` did 65 times
  the work and made OpenBLAS wake a second thread, which then spin-waited:
  next to onnxruntime that doubled the CPU time of the whole clip (a
  worker's inference went from 19 to 41 ms CPU).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.errors import FeatureError

__all__ = [
    "FeatureError",
    "FeatureParams",
    "MelProjection",
    "band_centres_hz",
    "log_mel",
    "log_mel_projected",
    "long_term_spectrum",
    "mel_filterbank",
    "pack_filters",
    "unpack_filters",
    "warm_up",
]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def floor_db(self) -> float:
        """The lowest value `log_mel` gives: 10 * log10(amin)."""
        return 10.0 * float(np.log10(self.amin))

    def n_frames(self, n_samples: int) -> int:
        """Frames that `log_mel` gives for a signal of `n_samples` (centred frames)."""
        return 1 + n_samples // self.hop_length


_MEL_LINEAR_HZ = 200.0 / 3
_MEL_BREAK_HZ = 1000.0
_MEL_BREAK = _MEL_BREAK_HZ / _MEL_LINEAR_HZ
_MEL_LOG_STEP = float(np.log(6.4) / 27.0)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's scale (librosa's default, htk=False): linear to 1 kHz, logarithmic above.
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _MEL_LINEAR_HZ
    above = hz >= _MEL_BREAK_HZ
    mel[above] = _MEL_BREAK + np.log(hz[above] / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _MEL_LINEAR_HZ
    above = mel >= _MEL_BREAK
    hz[above] = _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (mel[above] - _MEL_BREAK))
    return hz


@functools.lru_cache(maxsize=16)
def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """The mel filter bank, shape (n_mels, 1 + n_fft // 2), float32, read-only.

    It is `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)` (Slaney scale
    and area normalisation), computed here in numpy so that the service can
    read format-1 folders, which carry no packed bank, without importing
    librosa; tests/service/test_features.py holds it equal to librosa's.
    """
    fmax = params.fmax if params.fmax is not None else params.sample_rate / 2
    fft_hz = np.fft.rfftfreq(params.n_fft, d=1.0 / params.sample_rate)
    edges_mel = np.linspace(
        _hz_to_mel(np.array([params.fmin]))[0], _hz_to_mel(np.array([fmax]))[0], params.n_mels + 2
    )
    edges_hz = _mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    # Assigning float64 rows into a float32 array, then scaling in place, rounds as librosa does.
    basis = np.zeros((params.n_mels, fft_hz.size), dtype=np.float32)
    for band in range(params.n_mels):
        rising = -ramps[band] / widths[band]
        falling = ramps[band + 2] / widths[band + 1]
        basis[band] = np.maximum(0.0, np.minimum(rising, falling))
    basis *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    basis.setflags(write=False)
    return basis


def band_centres_hz(basis: np.ndarray, *, sample_rate: int, n_fft: int) -> np.ndarray:
    """Each mel band's centre (the STFT bin of its largest weight) in Hz; `basis` (n_mels, 1 + n_fft // 2)."""
    peaks: np.ndarray = np.argmax(basis, axis=1)
    return peaks * (sample_rate / n_fft)


@functools.lru_cache(maxsize=16)
def _window(n_fft: int) -> np.ndarray:
    # Periodic Hann, as scipy.signal.get_window("hann", n, fftbins=True); float64,
    # the precision the FFT runs in.
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
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


# The STFT runs over blocks of frames with per-thread buffers that are reused
# from clip to clip: a 10 s clip as one block needs fresh 2.5 MB arrays, and
# the page faults of fresh memory cost more than the FFT itself (measured
# 4.5-7 ms CPU per clip against 2.0-2.2 ms in blocks of 64 frames, whose
# 0.5 MB buffers also stay in cache).
_STFT_BLOCK = 64


class _StftBuffers:
    __slots__ = ("spectrum", "windowed")

    def __init__(self, n_fft: int) -> None:
        self.windowed = np.empty((_STFT_BLOCK, n_fft), dtype=np.float64)
        self.spectrum = np.empty((_STFT_BLOCK, 1 + n_fft // 2), dtype=np.complex128)


class _ThreadScratch(threading.local):
    def __init__(self) -> None:
        self.by_n_fft: dict[int, _StftBuffers] = {}

    def get(self, n_fft: int) -> _StftBuffers:
        buffers = self.by_n_fft.get(n_fft)
        if buffers is None:
            buffers = self.by_n_fft[n_fft] = _StftBuffers(n_fft)
        return buffers


_scratch = _ThreadScratch()


# OpenBLAS runs a float32 product on one thread up to a size (measured here:
# a matrix-vector product of 120,000 elements on one thread and 480,000 on
# two; a matrix product of 640,000 multiply-adds on one and 2.5 million on
# two, each then 100 times slower while the other core was busy). Every
# product of the projection stays below this many multiply-adds, so it runs on
# the calling thread however long the clip and never competes with other work.
_SINGLE_THREAD_MACS = 100_000
# Adjacent bands are grouped while their block of the bank (bands x bins they
# span) has at most this many weights: a product's cost is mostly the call, so
# a few wasted zeros are cheaper than more calls (measured best at 256-320).
_GROUP_AREA = 256


class MelProjection:
    """A mel filter bank kept as dense blocks of adjacent bands.

    Each triangular filter spans a few adjacent FFT bins (1 to 24 of 513 for
    the defaults), so a group of neighbouring bands spans few bins too: one
    small matrix product per group (18 for the defaults) replaces the dense
    (n_mels, n_bins) product. Built once per filter bank; read-only after.
    """

    __slots__ = ("_block", "_groups", "n_bins", "n_mels")

    def __init__(self, basis: np.ndarray) -> None:
        basis = np.asarray(basis, dtype=np.float32)
        if basis.ndim != 2:
            raise FeatureError(f"a mel filter bank has shape (n_mels, n_bins), got {basis.shape}")
        self.n_mels, self.n_bins = basis.shape
        # Groups of adjacent bands [first, last) tile all the bands, each with the
        # bins [lo, hi) its non-empty bands span; an empty band (more mels than the
        # FFT resolves) joins its neighbours as a zero column.
        groups: list[tuple[int, int, int, int]] = []
        first: int = 0
        span: tuple[int, int] | None = None  # the bins of the open group's non-empty bands
        for band, row in enumerate(basis):
            nonzero = np.flatnonzero(row)
            if nonzero.size == 0:
                continue
            lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
            if span is not None:
                merged = (min(span[0], lo), max(span[1], hi))
                if (band + 1 - first) * (merged[1] - merged[0]) <= _GROUP_AREA:
                    span = merged
                    continue
                groups.append((first, band, *span))
                first = band
            span = (lo, hi)
        groups.append((first, self.n_mels, *(span or (0, 0))))
        self._groups = [
            (first, last, lo, np.ascontiguousarray(basis[first:last, lo:hi].T) if hi > lo else None)
            for first, last, lo, hi in groups
        ]
        largest = max((last - first) * (hi - lo) for first, last, lo, hi in groups)
        self._block = max(1, _SINGLE_THREAD_MACS // max(1, largest))

    def apply_frames(self, power: np.ndarray) -> np.ndarray:
        """`power @ basis.T`: power (t, n_bins) float32 -> (t, n_mels) float32."""
        n_frames = power.shape[0]
        mel = np.empty((n_frames, self.n_mels), dtype=np.float32)
        for start in range(0, n_frames, self._block):
            stop = min(n_frames, start + self._block)
            for first, last, lo, weights in self._groups:
                if weights is None:
                    mel[start:stop, first:last] = 0.0
                else:
                    hi = lo + weights.shape[0]
                    np.matmul(power[start:stop, lo:hi], weights, out=mel[start:stop, first:last])
        return mel

    def apply(self, power_t: np.ndarray) -> np.ndarray:
        """`basis @ power_t`: power_t (n_bins, t) float32 -> (n_mels, t) float32."""
        return np.ascontiguousarray(self.apply_frames(power_t.T).T)


@functools.lru_cache(maxsize=16)
def _default_projection(params: FeatureParams) -> MelProjection:
    return MelProjection(mel_filterbank(params))


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
    # A model's own bank is prepared per call (about 0.1 ms); a `Detector` prepares it once.
    projection = _default_projection(params) if mel_basis is None else MelProjection(mel_basis)
    return log_mel_projected(y, params, projection)


def log_mel_projected(y: np.ndarray, params: FeatureParams, projection: MelProjection) -> np.ndarray:
    """`log_mel` with the filter bank prepared once (`MelProjection`), as a `Detector` keeps it."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise FeatureError(f"expected a mono signal of shape (n,), got shape {y.shape}")
    if y.size == 0:
        raise FeatureError("empty signal")
    y = y.astype(np.float32, copy=False)
    if not np.isfinite(y).all():
        raise FeatureError("signal contains NaN or infinite samples")

    n_fft, hop = params.n_fft, params.hop_length
    n_bins = 1 + n_fft // 2
    if projection.n_bins != n_bins:
        raise FeatureError(f"the mel filter bank has {projection.n_bins} bins; n_fft {n_fft} gives {n_bins}")
    margin = n_fft // 2  # centred frames, zero padding: librosa's default
    padded = np.empty(y.size + 2 * margin, dtype=np.float32)  # np.pad spends twice as long
    padded[:margin] = 0.0
    padded[margin : margin + y.size] = y
    padded[margin + y.size :] = 0.0
    if padded.size < n_fft:
        raise FeatureError(f"signal of {y.size} samples is shorter than one frame")
    n_frames = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        padded,
        shape=(n_frames, n_fft),
        strides=(padded.strides[0] * hop, padded.strides[0]),
        writeable=False,
    )
    power = np.empty((n_frames, n_bins), dtype=np.float32)  # frames-major, as the FFT writes it
    window = _window(n_fft)
    scratch = _scratch.get(n_fft)
    for start in range(0, n_frames, _STFT_BLOCK):
        stop = min(n_frames, start + _STFT_BLOCK)
        rows = stop - start
        # float32 frames times the float64 window: the float64 FFT input in one pass.
        windowed = np.multiply(frames[start:stop], window, out=scratch.windowed[:rows])
        spectrum = np.fft.rfft(windowed, axis=1, out=scratch.spectrum[:rows])
        if params.power == 2.0:
            pairs = spectrum.view(np.float64).reshape(rows, n_bins, 2)  # (re, im) of each bin
            np.square(pairs, out=pairs)  # in place: the spectrum is not needed again
            np.add(pairs[..., 0], pairs[..., 1], out=power[start:stop])  # re² + im², stored as float32
        else:
            np.abs(spectrum, out=power[start:stop])
    mel = projection.apply_frames(power)
    np.maximum(mel, params.amin, out=mel)
    spec = np.empty((projection.n_mels, n_frames), dtype=np.float32)
    np.log10(mel.T, out=spec)  # the transpose to (bands, frames) rides on the log's pass
    spec *= 10.0
    return spec


def long_term_spectrum(y: np.ndarray, *, n_fft: int, hop: int, amin: float = 1e-10) -> np.ndarray:
    """The clip's mean power spectrum in dB, shape (1 + n_fft // 2,), float64.

    Periodic-Hann frames of `n_fft` samples every `hop`, without padding (a
    clip shorter than one frame is zero-padded to it), |rfft|² averaged over
    the frames, then `10 * log10(max(p, amin))`. With n_fft 4096 at 16 kHz the
    bins are 3.9 Hz apart: the tones of a rotating machine and their shifts,
    which the 15.6-Hz STFT of the log-mel smears (the spectrum scorer,
    `service.scorers`). The caller checks that `y` is finite (log-mel does).
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise FeatureError(f"expected a non-empty mono signal of shape (n,), got shape {y.shape}")
    if y.size < n_fft:
        y = np.concatenate([y, np.zeros(n_fft - y.size, dtype=np.float32)])
    n_frames = 1 + (y.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        y, shape=(n_frames, n_fft), strides=(y.strides[0] * hop, y.strides[0]), writeable=False
    )
    window = _window(n_fft)
    total = np.zeros(1 + n_fft // 2, dtype=np.float64)
    # Blocks of frames keep the float64 temporaries small whatever the clip's length.
    for start in range(0, n_frames, 16):
        spectrum = np.fft.rfft(frames[start : start + 16] * window, axis=1)
        total += (spectrum.real**2 + spectrum.imag**2).sum(axis=0)
    return 10.0 * np.log10(np.maximum(total / n_frames, amin))

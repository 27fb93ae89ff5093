"""Look at machine sounds: the figures of the original study, and what a model makes of a clip.

`explore` draws, for one or more clips side by side (one column per clip):

* ``explore.png``: waveform, power spectral density (Welch, dB), spectrogram
  (STFT, dB), chromagram and the project's own log-mel spectrogram
  (`service.features.log_mel`), on colour scales shared by all columns so
  a normal and an anomalous clip can be compared by eye;
* ``reconstruction.png`` (with a model): the standardised log-mel the model
  sees, the model's reconstruction of it, the squared error, the error over
  time per patch relative to the threshold, and the error per mel bin; so a
  user sees where and at which frequencies a clip differs from normal.

The reconstruction runs through `service.detector.Detector` (the exported
ONNX graph), so its per-patch errors are those the service reports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from scipy import signal

from service.audio import AudioError, Channel, read_audio
from service.detector import Detector, DetectorError
from service.features import FeatureParams, log_mel
from training.dataset import parse_name
from training.errors import ExploreError
from training.options import add_channel_argument

EXPLORE_FIGURE = "explore.png"
RECONSTRUCTION_FIGURE = "reconstruction.png"
_PITCH_CLASSES = ("C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B")
_DPI = 100
_ENVELOPE_POINTS = 2000


@dataclass(frozen=True)
class Reconstruction:
    """A clip as the model sees and reconstructs it.

    Attributes
    ----------
    spec : (n_mels, t) standardised log-mel, the model's input
    reconstruction : (n_mels, t) the model's output re-assembled by averaging
        overlapping patches; NaN in frames no patch covers (the clip's tail)
    squared_error : (n_mels, t) (input - output)² per patch, overlap-averaged; NaN likewise
    patch_errors : (n_patches,) mean squared error per patch, the same as
        `Detector.score(...).patch_errors`
    patch_scores : (n_patches,) each patch on the scale of the clip score
        (`Score.segment_values`): the errors themselves unless the model fuses
        scorers
    patch_start, patch_end : (n_patches,) seconds
    mel_errors : (n_mels,) mean squared error per mel bin over all patches;
        its mean is the mean patch error
    score : the clip score the service answers (`Detector.score`)
    threshold : the threshold it is compared with (the machine ID's own when one is given)
    """

    spec: np.ndarray
    reconstruction: np.ndarray
    squared_error: np.ndarray
    patch_errors: np.ndarray
    patch_scores: np.ndarray
    patch_start: np.ndarray
    patch_end: np.ndarray
    mel_errors: np.ndarray
    score: float
    threshold: float


def patches_to_spectrogram(patches: np.ndarray, starts: np.ndarray, n_frames: int) -> np.ndarray:
    """Re-assemble overlapping patches into one spectrogram by averaging where they overlap.

    Parameters
    ----------
    patches : (N, n_mels, frames)
    starts : (N,) first frame of each patch
    n_frames : width t of the result

    Returns
    -------
    (n_mels, n_frames) float32; NaN in frames that no patch covers.
    """
    n, n_mels, frames = patches.shape
    if len(starts) != n:
        raise ValueError(f"{n} patches but {len(starts)} start frames")
    total = np.zeros((n_mels, n_frames), dtype=np.float64)
    count = np.zeros(n_frames, dtype=np.int64)
    for patch, start in zip(patches, starts, strict=True):
        if start < 0 or start + frames > n_frames:
            raise ValueError(f"patch at frame {start} of width {frames} exceeds {n_frames} frames")
        total[:, start : start + frames] += patch
        count[start : start + frames] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[:, count == 0] = np.nan
    return out.astype(np.float32)


def reconstruct_clip(
    detector: Detector, samples: np.ndarray, *, machine_id: str | None = None
) -> Reconstruction:
    """Run a mono waveform (at the model's rate) through the detector and keep every intermediate.

    `machine_id` scores the clip as a request naming it would be (that ID's threshold and, in a
    fused model, its envelope Gaussian).
    """
    if samples.size < detector.min_samples:
        need = detector.min_samples / detector.params.sample_rate
        raise ExploreError(
            f"clip is {samples.size / detector.params.sample_rate:.3f} s long; "
            f"the model needs at least {need:.3f} s"
        )
    scored = detector.score(samples, machine_id=machine_id)
    spec = detector.features(samples)
    batch, starts = detector.model_inputs(spec)
    inputs = detector.layout.by_mel(batch)
    recon = detector.layout.by_mel(detector.reconstruct(batch))
    squared = np.square(inputs - recon)  # (N, n_mels, frames)
    return Reconstruction(
        spec=spec,
        reconstruction=patches_to_spectrogram(recon, starts, spec.shape[1]),
        squared_error=patches_to_spectrogram(squared, starts, spec.shape[1]),
        patch_errors=squared.mean(axis=(1, 2)),
        patch_scores=scored.segment_values,
        patch_start=scored.patch_start,
        patch_end=scored.patch_end,
        mel_errors=squared.mean(axis=(0, 2)),
        score=scored.score,
        threshold=detector.bundle.threshold.for_id(machine_id).value,
    )


def _machine_id(path: Path, detector: Detector) -> str | None:
    """The machine ID in a DCASE file name (`..._id_02_...`) when the model knows it, else None."""
    found = parse_name(path.name, default_id="").machine_id
    return found if found in detector.bundle.machine_ids else None


def _titles(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    # Same file name in two folders (e.g. normal_id_00_00000000.wav of two
    # machine types): the parent folder tells the columns apart.
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _limits(arrays: Sequence[np.ndarray], *, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Colour limits shared by all columns, from percentiles so one click does not wash out the rest."""
    values = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _image(
    ax: Axes,
    data: np.ndarray,
    *,
    extent: tuple[float, float, float, float],
    limits: tuple[float, float],
    cmap: str = "magma",
) -> AxesImage:
    return ax.imshow(
        data,
        origin="lower",
        aspect="auto",
        extent=extent,
        cmap=cmap,
        vmin=limits[0],
        vmax=limits[1],
        interpolation="nearest",
    )


def _waveform(ax: Axes, y: np.ndarray, sr: int) -> None:
    t = np.arange(y.size) / sr
    if y.size > 2 * _ENVELOPE_POINTS:
        # Min/max envelope per bucket: what a plot of every sample shows, at a fraction of the cost.
        usable = y.size // _ENVELOPE_POINTS * _ENVELOPE_POINTS
        buckets = y[:usable].reshape(_ENVELOPE_POINTS, -1)
        centres = t[:usable].reshape(_ENVELOPE_POINTS, -1).mean(axis=1)
        ax.fill_between(centres, buckets.min(axis=1), buckets.max(axis=1), color="tab:blue", linewidth=0)
    else:
        ax.plot(t, y, color="tab:blue", linewidth=0.6)
    ax.set(xlim=(0, y.size / sr), xlabel="time (s)", ylabel="amplitude")


def _mel_axis(ax: Axes, params: FeatureParams, *, axis: str = "y", n_ticks: int = 5) -> None:
    """Label a mel-bin axis (bins 0..n_mels) with the bands' centre frequencies."""
    import librosa

    centres = librosa.mel_frequencies(
        n_mels=params.n_mels + 2, fmin=params.fmin, fmax=params.fmax or params.sample_rate / 2
    )[1:-1]
    bins = np.linspace(0, params.n_mels - 1, n_ticks).round().astype(int)
    labels = [f"{centres[b] / 1000:.1f}k" if centres[b] >= 1000 else f"{centres[b]:.0f}" for b in bins]
    if axis == "y":
        ax.set_yticks(bins + 0.5, labels)
        ax.set_ylabel("mel band (Hz)")
    else:
        ax.set_xticks(bins + 0.5, labels)
        ax.set_xlabel("mel band (Hz)")


def _load(paths: Sequence[str | Path], *, sample_rate: int, channel: Channel) -> list[np.ndarray]:
    clips = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise ExploreError(f"{path}: no such file")
        try:
            clips.append(read_audio(path, sample_rate=sample_rate, channel=channel).samples)
        except AudioError as error:
            raise ExploreError(f"{path}: {error}") from None
    return clips


def _explore_figure(
    clips: Sequence[np.ndarray],
    titles: Sequence[str],
    params: FeatureParams,
    *,
    mel_basis: np.ndarray | None,
    chroma: bool,
    path: Path,
) -> Path:
    sr, n_fft, hop = params.sample_rate, params.n_fft, params.hop_length
    psds, spectrograms, chromas, mels = [], [], [], []
    for y in clips:
        freqs, power = signal.welch(y, fs=sr, nperseg=min(n_fft, y.size))
        psds.append((freqs, 10 * np.log10(np.maximum(power, 1e-20))))
        _, _, stft = signal.stft(y, fs=sr, window="hann", nperseg=n_fft, noverlap=n_fft - hop)
        spectrograms.append(20 * np.log10(np.maximum(np.abs(stft), 1e-10)))
        mels.append(log_mel(y, params, mel_basis=mel_basis))
        if chroma:
            # Deferred: librosa.feature compiles numba code on first use (seconds to tens of seconds).
            import librosa.feature

            chromas.append(librosa.feature.chroma_stft(y=y, sr=sr, n_fft=n_fft, hop_length=hop))

    rows = ["waveform", "psd", "spectrogram", *(["chroma"] if chroma else []), "mel"]
    fig = Figure(figsize=(4.6 * len(clips), 2.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(clips), squeeze=False)
    spec_limits = _limits(spectrograms)
    mel_limits = _limits(mels)
    psd_low = min(float(np.percentile(p, 0.5)) for _, p in psds)
    psd_high = max(float(p.max()) for _, p in psds)
    for column, (y, title) in enumerate(zip(clips, titles, strict=True)):
        duration = y.size / sr
        by_row = dict(zip(rows, axes[:, column], strict=True))
        _waveform(by_row["waveform"], y, sr)
        by_row["waveform"].set_title(title, fontsize=10)

        freqs, power_db = psds[column]
        ax = by_row["psd"]
        ax.plot(freqs, power_db, color="tab:blue", linewidth=0.8)
        ax.set(
            xlim=(0, sr / 2), ylim=(psd_low - 3, psd_high + 3), xlabel="frequency (Hz)", ylabel="PSD (dB/Hz)"
        )
        ax.grid(alpha=0.3)

        image = _image(
            by_row["spectrogram"], spectrograms[column], extent=(0, duration, 0, sr / 2), limits=spec_limits
        )
        by_row["spectrogram"].set(xlabel="time (s)", ylabel="frequency (Hz)")
        if column == len(clips) - 1:
            fig.colorbar(image, ax=by_row["spectrogram"], label="dB")

        if chroma:
            image = _image(
                by_row["chroma"],
                chromas[column],
                extent=(0, duration, -0.5, 11.5),
                limits=(0, 1),
                cmap="viridis",
            )
            by_row["chroma"].set_yticks(range(12), _PITCH_CLASSES, fontsize=7)
            by_row["chroma"].set(xlabel="time (s)", ylabel="pitch class")
            if column == len(clips) - 1:
                fig.colorbar(image, ax=by_row["chroma"], label="chroma")

        image = _image(by_row["mel"], mels[column], extent=(0, duration, 0, params.n_mels), limits=mel_limits)
        by_row["mel"].set_xlabel("time (s)")
        _mel_axis(by_row["mel"], params)
        if column == len(clips) - 1:
            fig.colorbar(image, ax=by_row["mel"], label="log-mel (dB)")
    fig.suptitle(
        "waveform · power spectral density · spectrogram"
        + (" · chromagram" if chroma else "")
        + " · log-mel spectrogram",
        fontsize=11,
    )
    fig.savefig(path, dpi=_DPI)
    return path


def _reconstruction_figure(
    recons: Sequence[Reconstruction], titles: Sequence[str], detector: Detector, *, path: Path
) -> Path:
    params = detector.params
    seconds_per_frame = params.hop_length / params.sample_rate
    rows = ("input", "reconstruction", "error", "time", "frequency")
    fig = Figure(figsize=(4.6 * len(recons), 2.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(recons), squeeze=False)
    # Input and reconstruction on one colour scale: a darker reconstruction is one that lost energy.
    spec_limits = _limits([r.spec for r in recons] + [r.reconstruction for r in recons])
    error_limits = _limits([r.squared_error for r in recons], low=0.0, high=99.0)
    # Each clip against its own threshold (its machine ID's), as a unit where it can serve as one.
    relative = all(r.threshold > 0 for r in recons)
    time_high = max(float(np.max(r.patch_scores)) / (r.threshold if relative else 1.0) for r in recons)
    # The per-band errors are on the score's scale only when the score is their mean.
    errors_are_scores = detector.bundle.scoring is None
    mel_high = max(float(np.max(r.mel_errors)) for r in recons)
    for column, (r, title) in enumerate(zip(recons, titles, strict=True)):
        by_row = dict(zip(rows, axes[:, column], strict=True))
        extent = (0, r.spec.shape[1] * seconds_per_frame, 0, params.n_mels)
        threshold = r.threshold
        unit = threshold if relative else 1.0
        verdict = "anomalous" if r.score > threshold else "normal"
        by_row["input"].set_title(
            f"{title}\nscore {r.score:.4g} / threshold {threshold:.4g} → {verdict}", fontsize=9
        )
        for name, data, limits, cmap, label in (
            ("input", r.spec, spec_limits, "magma", "model input (standardised log-mel)"),
            ("reconstruction", r.reconstruction, spec_limits, "magma", "reconstruction"),
            ("error", r.squared_error, error_limits, "inferno", "squared error"),
        ):
            image = _image(by_row[name], data, extent=extent, limits=limits, cmap=cmap)
            by_row[name].set_xlabel("time (s)")
            _mel_axis(by_row[name], params)
            if column == len(recons) - 1:
                fig.colorbar(image, ax=by_row[name], label=label)

        ax = by_row["time"]
        above = r.patch_scores > threshold
        for start, end in zip(r.patch_start[above], r.patch_end[above], strict=True):
            # Shade where a patch alone would exceed the threshold: where the clip sounds wrong.
            ax.axvspan(start, end, color="tab:red", alpha=0.12, linewidth=0)
        centres = (r.patch_start + r.patch_end) / 2
        ax.plot(
            centres,
            r.patch_scores / unit,
            marker=".",
            color="tab:red",
            linewidth=1,
            label=("patch error" if errors_are_scores else "patch score") + " (at patch centre)",
        )
        ax.axhline(threshold / unit, color="black", linestyle="--", linewidth=1, label="threshold")
        ax.axhline(r.score / unit, color="tab:blue", linestyle=":", linewidth=1, label="clip score")
        ax.set(
            xlim=extent[:2],
            ylim=(0, max(time_high, 1.0) * 1.12),
            xlabel="time (s)",
            ylabel=("score / threshold" if relative else "score"),
        )
        ax.legend(fontsize=7, loc="lower right")

        ax = by_row["frequency"]
        ax.plot(
            np.arange(params.n_mels) + 0.5,
            r.mel_errors,
            color="tab:purple",
            linewidth=1,
            label="mean squared error per mel band",
        )
        if errors_are_scores:
            ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        top = max(mel_high, threshold) if errors_are_scores else mel_high
        ax.set(xlim=(0, params.n_mels), ylim=(0, top * 1.12), ylabel="mean squared error")
        _mel_axis(ax, params, axis="x")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"model {detector.name}: where the reconstruction differs from the clip", fontsize=11)
    fig.savefig(path, dpi=_DPI)
    return path


def explore(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    model_dir: str | Path | None = None,
    channel: Channel = 0,
    chroma: bool = True,
) -> list[Path]:
    """Draw the exploration figures of `paths`, one column per clip; return the PNG paths.

    Parameters
    ----------
    paths : audio files (any format libsndfile reads)
    out_dir : folder for ``explore.png`` (and ``reconstruction.png`` with a model)
    model_dir : an exported detector folder; adds the reconstruction figure and
        makes every figure use the model's sample rate and feature parameters
    channel : channel of multi-channel files (0 by default, as DCASE took
        from the 8-channel MIMII recordings), or "mean"
    chroma : draw the chromagram (librosa compiles numba code on first use)

    Raises
    ------
    ExploreError : a missing or undecodable file, a clip too short for the
        model, or a model folder that cannot be loaded
    """
    if not paths:
        raise ExploreError("no audio files given")
    detector = None
    if model_dir is not None:
        if not Path(model_dir).is_dir():
            raise ExploreError(f"model folder {model_dir} does not exist")
        try:
            detector = Detector(Path(model_dir))
        except DetectorError as error:
            raise ExploreError(str(error)) from None
    params = detector.params if detector is not None else FeatureParams()
    mel_basis = detector.bundle.features.mel_basis() if detector is not None else None
    files = [Path(p) for p in paths]
    clips = _load(files, sample_rate=params.sample_rate, channel=channel)
    titles = _titles(files)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _explore_figure(clips, titles, params, mel_basis=mel_basis, chroma=chroma, path=out / EXPLORE_FIGURE)
    ]
    if detector is not None:
        recons = [
            reconstruct_clip(detector, y, machine_id=_machine_id(path, detector))
            for path, y in zip(files, clips, strict=True)
        ]
        written.append(_reconstruction_figure(recons, titles, detector, path=out / RECONSTRUCTION_FIGURE))
    return written


def add_explore_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``asd-train explore``; pair with `run_explore`."""
    parser.add_argument("paths", type=Path, nargs="+", metavar="WAV", help="audio files, one column each")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("explore"),
        metavar="DIR",
        help="folder for the PNG figures (default: ./explore)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="MODEL_DIR",
        dest="model_dir",
        help="also draw this detector's reconstruction and its error over time and frequency",
    )
    add_channel_argument(parser)
    parser.add_argument(
        "--no-chroma", action="store_true", help="skip the chromagram (saves librosa's numba compilation)"
    )


def run_explore(args: argparse.Namespace) -> int:
    """Run ``asd-train explore`` from parsed arguments; returns the exit status."""
    try:
        written = explore(
            args.paths, args.out, model_dir=args.model_dir, channel=args.channel, chroma=not args.no_chroma
        )
    except ExploreError as error:
        print(f"asd-train explore: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0

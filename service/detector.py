"""A loaded detector: features, ONNX inference and the anomaly score.

This is the scoring path of the product. The service calls it per request,
and training calls the same code on the exported model to calibrate the
threshold and to evaluate, so the numbers a user sees describe what is
deployed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnxruntime as ort

from service.audio import Channel, Clip, read_audio
from service.bundle import Bundle, sha256_of
from service.bundle_scoring import Scoring, ScoringEntry
from service.errors import (
    AudioError,
    ClipTooShortError,
    DetectorError,
    FeatureError,
    InvalidAudioError,
    UndecodableAudioError,
)
from service.features import (
    MelProjection,
    band_centres_hz,
    log_mel_projected,
    long_term_spectrum,
    mel_filterbank,
    warm_up,
)
from service.patches import PatchLayout
from service.scorers import coarse_bands, fuse, mahalanobis, pool

__all__ = [
    "MAX_BATCH_ELEMENTS",
    "AudioSource",
    "ClipTooShortError",
    "Combined",
    "Detector",
    "DetectorError",
    "Score",
    "check_finite",
]

# Input values per onnxruntime run: 32 CAE patches of 128 x 32, or 204 dense
# patches of 5 x 128; see `Detector.reconstruct`.
MAX_BATCH_ELEMENTS = 32 * 128 * 32

# What `read_audio` decodes: a path, the file's bytes or an open binary file.
AudioSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True)
class Score:
    """Anomaly score of one clip and the reconstruction errors behind it.

    `patch_errors`, `patch_start` and `patch_end` have shape (n_patches,);
    times are in seconds from the start of the clip. `bin_errors`, when
    asked for, is the squared error per mel bin averaged over every patch
    and frame, shape (n_mels,); its mean is the mean patch error (`score`
    under the default scoring). `band_db` is the clip's mean log-mel level
    per mel bin in dB before standardisation, shape (n_mels,), for the input
    checks (`service.inputcheck`) and the envelope scorer. `spectrum_db`, with
    the spectrum scorer only, is the clip's long-term spectrum in dB, shape
    (1 + n_fft // 2,) of `Scoring.spectrum`.

    A bundle with a `scoring` section (`service.bundle_scoring.Scoring`) pools the
    patch errors otherwise and may fuse scorers: then `patch_scores`, shape
    (n_patches,), puts each patch on the scale of `score` (for segments),
    `components` holds each scorer's raw score (the CAE's pooled error, the
    envelope distance) and `scoring_id` the machine ID whose entry scored the
    clip (None: the model-wide one).

    `error_map`, when asked for, is the squared error per mel bin and frame,
    shape (n_mels, t_covered): each frame's mean over the patches that cover
    it, for frames 0 to the end of the last patch (a tail shorter than a hop
    has none; frames between patches, when the hop is longer than a patch,
    are 0). `log_mel` is then the clip's log-mel in dB, shape (n_mels, t).
    """

    score: float
    patch_errors: np.ndarray
    patch_start: np.ndarray
    patch_end: np.ndarray
    bin_errors: np.ndarray | None = None
    band_db: np.ndarray | None = None
    spectrum_db: np.ndarray | None = None
    patch_scores: np.ndarray | None = None
    components: dict[str, float] | None = None
    scoring_id: str | None = None
    error_map: np.ndarray | None = None
    log_mel: np.ndarray | None = None

    @property
    def segment_values(self) -> np.ndarray:
        """Per-patch values on the scale of `score`, shape (n_patches,): `patch_scores` or the errors."""
        return self.patch_errors if self.patch_scores is None else self.patch_scores


@dataclass(frozen=True)
class Combined:
    """A clip score from its patch errors and envelope (`Detector.combine`); fields as in `Score`."""

    score: float
    patch_scores: np.ndarray | None
    components: dict[str, float] | None
    scoring_id: str | None


@dataclass(frozen=True)
class _Entry:
    """One scoring entry's numbers as arrays: envelope mean (k,), precision (k, k), (mean, std) per scorer."""

    mean: np.ndarray
    precision: np.ndarray
    stats: dict[str, tuple[float, float]]
    spectrum: tuple[np.ndarray, np.ndarray] | None  # the spectrum Gaussian's mean and precision


class Detector:
    """One exported model folder, checked and ready to score waveforms and audio files."""

    def __init__(
        self,
        folder: Path,
        *,
        intra_op_threads: int = 1,
        verify_hash: bool = True,
        spectrum: tuple[int, int] | None = None,
    ) -> None:
        """`spectrum` (n_fft, hop) keeps each clip's long-term spectrum (`Score.spectrum_db`) even
        when the bundle has no spectrum scorer: training scores its fold models so."""
        self.folder = Path(folder)
        self.name = self.folder.name
        try:
            self.bundle = Bundle.read(self.folder)
        except FileNotFoundError:
            raise DetectorError(f"{self.folder}: no threshold.json") from None
        except ValueError as error:
            raise DetectorError(f"{self.folder}: invalid threshold.json: {error}") from None
        model_path = self.folder / self.bundle.model.file
        if model_path.parent != self.folder or not model_path.is_file():
            raise DetectorError(f"{self.folder}: model file {self.bundle.model.file!r} not found")
        if verify_hash:
            actual = sha256_of(model_path)
            if actual != self.bundle.model.sha256:
                raise DetectorError(
                    f"{self.folder}: sha256 of {model_path.name} is {actual}, "
                    f"threshold.json expects {self.bundle.model.sha256}"
                )
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        if intra_op_threads > 1:
            # Pool threads that spin-wait between parallel sections keep their
            # core busy: measured here, 64 ms of CPU per clip instead of 37 ms
            # with 2 threads, CPU that other requests and workers need.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise DetectorError(
                f"{self.folder}: onnxruntime cannot load {model_path.name}: {error}"
            ) from None
        self.params = self.bundle.features.params()
        # A bundle carries its filter bank, so serving needs no librosa; a bundle
        # without one can only be served where librosa (the train extra) is installed.
        packed = self.bundle.features.mel_basis()
        try:
            self._mel_basis = packed if packed is not None else mel_filterbank(self.params)
        except ImportError:
            raise DetectorError(
                f"{self.folder}: threshold.json has no packed mel filter bank and librosa is not "
                "installed; re-export the model with a current `asd-train fit`"
            ) from None
        # The filter bank's non-zero runs, found once per model rather than per clip.
        self._mel = MelProjection(self._mel_basis)
        self._mel_hz = band_centres_hz(
            self._mel_basis, sample_rate=self.params.sample_rate, n_fft=self.params.n_fft
        )
        self._mel_hz.setflags(write=False)  # one array for every caller
        patching = self.bundle.patching
        self.layout = PatchLayout(
            frames=patching.frames, hop=patching.hop, arch=self.bundle.model.arch, params=self.params
        )
        self._mean = np.asarray(self.bundle.normalization.mean, dtype=np.float32)[:, None]
        self._inv_std = (1.0 / np.asarray(self.bundle.normalization.std, dtype=np.float32))[:, None]
        self.scoring: Scoring | None = self.bundle.scoring
        self._entries = _entries(self.scoring)
        own = self.scoring.spectrum if self.scoring is not None else None
        self._spectrum_frames = (own.n_fft, own.hop) if own is not None else spectrum
        self._check_graph()
        warm_up(self.params)

    @property
    def threshold(self) -> float:
        return self.bundle.threshold.value

    @property
    def mel_basis(self) -> np.ndarray:
        """The mel filter bank the features use, shape (n_mels, 1 + n_fft // 2)."""
        return self._mel_basis

    @property
    def frames(self) -> int:
        """Log-mel frames per patch (`layout`)."""
        return self.layout.frames

    @property
    def hop(self) -> int:
        """Frames from one patch's start to the next one's (`layout`)."""
        return self.layout.hop

    @property
    def min_samples(self) -> int:
        """Fewest samples (at the model's rate) that give one patch."""
        return self.layout.min_samples

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.layout.input_shape

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        spec = self.bundle.model
        if spec.input_name not in inputs or spec.output_name not in outputs:
            raise DetectorError(
                f"{self.folder}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                f"threshold.json names {spec.input_name!r} and {spec.output_name!r}"
            )
        graph_shape = tuple(inputs[spec.input_name].shape[1:])
        if graph_shape != self.input_shape:
            raise DetectorError(
                f"{self.folder}: graph input shape {graph_shape} does not match the feature "
                f"parameters, which give {self.input_shape}"
            )

    @property
    def mel_hz(self) -> np.ndarray:
        """Each mel band's centre (its largest filter weight) in Hz, shape (n_mels,), read-only."""
        return self._mel_hz

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel in dB before standardisation, shape (n_mels, t), float32."""
        return log_mel_projected(samples, self.params, self._mel)

    def standardise(self, spec: np.ndarray) -> np.ndarray:
        """`(spec - mean) / std` per mel bin, in place; returns `spec`."""
        spec -= self._mean
        spec *= self._inv_std
        return spec

    def features(self, samples: np.ndarray) -> np.ndarray:
        """Standardised log-mel, shape (n_mels, t), float32."""
        return self.standardise(self.log_mel(samples))

    def model_inputs(self, spec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Patches of a standardised spectrogram in the graph's layout, and their start frames."""
        return self.layout.batch(spec)

    def reconstruct(self, batch: np.ndarray) -> np.ndarray:
        """The graph's output for `batch`, run in chunks of at most `MAX_BATCH_ELEMENTS` input values.

        onnxruntime keeps its memory arena at the largest run it has seen: a
        300 s clip in one run (584 CAE patches) left a worker at 560 MB for
        good. In chunks the arena stays at a chunk's size (a 10 s clip is one
        chunk), and the result is the same to the bit: patches do not interact.
        """
        names = [self.bundle.model.output_name]
        per_patch = max(1, int(np.prod(batch.shape[1:])))
        step = max(1, MAX_BATCH_ELEMENTS // per_patch)
        if len(batch) <= step:
            # A tensor output is an ndarray; onnxruntime types `run` loosely.
            output: np.ndarray = self.session.run(names, {self.bundle.model.input_name: batch})[0]
            return output
        parts = [
            self.session.run(names, {self.bundle.model.input_name: batch[start : start + step]})[0]
            for start in range(0, len(batch), step)
        ]
        return np.concatenate(parts, axis=0)

    def score(
        self,
        samples: np.ndarray,
        *,
        per_bin: bool = False,
        machine_id: str | None = None,
        error_map: bool = False,
    ) -> Score:
        """Anomaly score of a mono waveform at the model's sample rate.

        By default the score is the mean squared reconstruction error over
        all patches; a bundle's `scoring` section may pool the patch errors
        otherwise and fuse them with the envelope scorer (`combine`). Each
        patch's own error is kept with its time span for localisation.
        `per_bin` also keeps the error of each mel bin (for evaluation: which
        frequencies the score comes from). `machine_id` (normalised, e.g.
        "06") selects that ID's envelope model and standardisation in a fused
        bundle; None, or an ID without its own entry, uses the model-wide
        ones. Bundles without fusion ignore it. `error_map` also keeps the
        error per mel bin and frame and the log-mel (for a picture of where
        the error lies); it costs a copy of the spectrogram.
        """
        if samples.size < self.min_samples:
            need = self.min_samples / self.params.sample_rate
            have = samples.size / self.params.sample_rate
            raise ClipTooShortError(f"audio is {have:.3f} s long; this model needs at least {need:.3f} s")
        spec = self.log_mel(samples)  # refuses non-finite samples before the spectrum sees them
        band_db = spec.mean(axis=1, dtype=np.float64)
        frames = self._spectrum_frames
        spectrum_db = None if frames is None else long_term_spectrum(samples, n_fft=frames[0], hop=frames[1])
        # standardise works in place: the map keeps the dB values.
        spec_db = spec.copy() if error_map else None
        batch, starts = self.model_inputs(self.standardise(spec))
        recon = self.reconstruct(batch)
        if recon.shape == batch.shape and recon.dtype == batch.dtype and recon.flags.writeable:
            squared = np.square(np.subtract(batch, recon, out=recon), out=recon)  # no temporaries
        else:
            squared = np.square(batch - recon)
        errors = np.mean(squared.reshape(len(batch), -1), axis=1)
        bins = frame_errors = None
        if per_bin or error_map:
            by_mel = self.layout.by_mel(squared)
            if per_bin:
                bins = by_mel.mean(axis=(0, 2), dtype=np.float64)
            if error_map:
                frame_errors = self.layout.frame_means(by_mel)
        start, end = self.layout.times(starts, n_samples=samples.size)
        if self.scoring is None:
            return Score(
                score=float(errors.mean()),
                patch_errors=errors,
                patch_start=start,
                patch_end=end,
                bin_errors=bins,
                band_db=band_db,
                spectrum_db=spectrum_db,
                error_map=frame_errors,
                log_mel=spec_db,
            )
        combined = self.combine(errors, band_db, machine_id=machine_id, spectrum_db=spectrum_db)
        return Score(
            score=combined.score,
            patch_errors=errors,
            patch_start=start,
            patch_end=end,
            bin_errors=bins,
            band_db=band_db,
            spectrum_db=spectrum_db,
            patch_scores=combined.patch_scores,
            components=combined.components,
            scoring_id=combined.scoring_id,
            error_map=frame_errors,
            log_mel=spec_db,
        )

    def read(self, source: AudioSource, *, channel: Channel = 0) -> Clip:
        """`source` decoded as this model takes it: `read_audio` at its sample rate (`channel` as there).

        A clip too short for one patch is refused (`AudioTooShortError`) before
        it is resampled. For a caller that needs the decoded clip besides its
        score (e.g. its source sample rate); to score a file, `score_file`.
        """
        rate = self.params.sample_rate
        return read_audio(source, sample_rate=rate, channel=channel, min_seconds=self.min_samples / rate)

    def score_file(
        self,
        source: AudioSource,
        *,
        channel: Channel = 0,
        machine_id: str | None = None,
        per_bin: bool = False,
    ) -> Score:
        """Anomaly score of an audio file, read and checked as the service reads an upload.

        The one way to score a recording that is not decoded yet: training's
        export (the threshold's scores) and evaluation, `asd-score` and the
        benchmarks call it.
        `source` is a path, or the file's bytes or an open binary file. The
        file is decoded by `read` (`channel`: an index or "mean", as in
        `service.audio.read_audio`) and scored by `score` (`machine_id` and
        `per_bin` as there). A score that is not finite is refused as the
        service refuses it (`check_finite`).

        Every refusal is an `AudioError` (or, should log-mel refuse the
        samples, a `FeatureError`) whose message, for a path, starts with the
        path: `UndecodableAudioError` for a missing file or one that is not
        audio, `AudioTooShortError` (`ClipTooShortError` among them) for a clip
        too short for the model, and the rest of the tree in `service.errors`.
        """
        try:
            clip = self.read(source, channel=channel)
            return check_finite(self.score(clip.samples, per_bin=per_bin, machine_id=machine_id))
        except (AudioError, FeatureError) as error:
            if not isinstance(source, (str, os.PathLike)):
                raise
            reason = str(error)
            if isinstance(error, UndecodableAudioError) and not os.path.exists(source):
                reason = "no such file"  # libsndfile says only "System error."
            # The same class, so that callers catch what they would catch from read_audio and score.
            raise type(error)(f"{os.fspath(source)}: {reason}") from None

    def combine(
        self,
        patch_errors: np.ndarray,
        band_db: np.ndarray,
        *,
        machine_id: str | None = None,
        spectrum_db: np.ndarray | None = None,
    ) -> Combined:
        """The clip score from patch errors (n_patches,) and mean level per mel bin (n_mels,) in dB.

        What `score` does after the graph, also for training: it rescores a
        calibration clip for the model-wide entry without running the graph
        again. `machine_id` as in `score`; `spectrum_db` (`Score.spectrum_db`)
        is needed when the bundle has the spectrum scorer.
        """
        scoring = self.scoring
        if scoring is None:
            return Combined(
                score=float(patch_errors.mean()), patch_scores=None, components=None, scoring_id=None
            )
        pooled = pool(patch_errors, pooling=scoring.pooling, param=scoring.pooling_param)
        if not scoring.fused:
            return Combined(score=pooled, patch_scores=None, components={"cae": pooled}, scoring_id=None)
        assert scoring.band_edges is not None and scoring.offset is not None
        used, _ = scoring.entry_for(machine_id)
        entry = self._entries[used]
        components = {
            "cae": pooled,
            "envelope": float(
                mahalanobis(
                    coarse_bands(band_db, scoring.band_edges), mean=entry.mean, precision=entry.precision
                )
            ),
        }
        if scoring.spectrum is not None:
            if spectrum_db is None or entry.spectrum is None:
                raise ValueError(
                    "this detector's spectrum scorer needs the clip's spectrum (Score.spectrum_db)"
                )
            mean, precision = entry.spectrum
            bands = coarse_bands(spectrum_db, scoring.spectrum.bin_edges)
            components["spectrum"] = float(mahalanobis(bands, mean=mean, precision=precision))
        z_clip = [
            (components[name] - entry.stats[name][0]) / entry.stats[name][1] for name in scoring.scorers
        ]
        rule = scoring.fusion
        score = fuse(z_clip, offset=scoring.offset, rule=rule)
        # Pooling is a weighted mean of sorted errors, so under the mean rule patch scores pooled give
        # `score` (floors aside); under max they give at least it (service.scorers).
        cae_mean, cae_std = entry.stats["cae"]
        errors = np.asarray(patch_errors, dtype=np.float64)
        patch_scores = fuse([(errors - cae_mean) / cae_std, *z_clip[1:]], offset=scoring.offset, rule=rule)
        return Combined(
            score=float(score),
            patch_scores=np.asarray(patch_scores),
            components=components,
            scoring_id=used,
        )

    def is_anomalous(self, score: float) -> bool:
        return score > self.threshold


def check_finite(scored: Score) -> Score:
    """`scored` when every patch error is finite, else `InvalidAudioError`.

    Finite float samples far beyond full scale (e.g. 1e30) overflow the float32
    spectrogram; a NaN score would compare as "normal".
    """
    if not np.isfinite(scored.patch_errors).all():
        raise InvalidAudioError("the audio gives no finite anomaly score: samples far beyond full scale?")
    return scored


def _entries(scoring: Scoring | None) -> dict[str | None, _Entry]:
    """A fused bundle's entries as arrays, keyed by machine ID (None: model-wide), built once per load."""
    if scoring is None or not scoring.fused:
        return {}
    found: list[tuple[str | None, ScoringEntry | None]] = [
        (None, scoring.model_wide),
        *(scoring.per_id or {}).items(),
    ]
    return {
        key: _Entry(
            mean=np.asarray(entry.envelope.mean, dtype=np.float64),
            precision=np.ascontiguousarray(entry.envelope.precision, dtype=np.float64),
            stats={name: (s.mean, s.std) for name, s in entry.standardisation.items()},
            spectrum=None
            if entry.spectrum is None
            else (
                np.asarray(entry.spectrum.mean, dtype=np.float64),
                np.ascontiguousarray(entry.spectrum.precision, dtype=np.float64),
            ),
        )
        for key, entry in found
        if entry is not None
    }

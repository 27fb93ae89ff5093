"""Finding, reading and featurising the recordings a model learns from.

Layouts accepted for a data root (see `resolve_folder`):

* the DCASE 2020 Task 2 layout, `<root>/<machine_type>/{train,test}/`,
* `<root>` pointing at `<root>/<machine_type>` (holding `train/`, `test/`),
* `<root>` pointing at a `train` (or `test`) folder itself, or at any plain
  folder of WAV files (not searched recursively).

File names follow DCASE: `{normal,anomaly}_id_XX_NNNNNNNN.wav`. The machine
ID is the number after `id_`, zero-padded to two digits; a file without an
ID gets `DEFAULT_ID` ("00"), so a plain folder of one machine's recordings
trains a one-ID model. Audio goes through `service.audio.read_audio` (the
decoder the service uses), features through `service.features`, patches
through `service.patches` (the layout the exported detector cuts by).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.audio import AudioError, Channel, read_audio
from service.features import (
    FeatureError,
    FeatureParams,
    band_centres_hz,
    log_mel,
    long_term_spectrum,
    mel_filterbank,
)
from service.inputcheck import ClipStats, clip_stats
from service.patches import Arch as Arch  # re-exported: training names the architectures from here
from service.patches import PatchLayout
from training.errors import DatasetError

DEFAULT_ID = "00"
WAV_SUFFIXES = (".wav",)

Label = Literal["normal", "anomaly"]

_ID_PATTERN = re.compile(r"(?:^|_)id_(\d+)(?=_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class ClipName:
    """What a file name says about a recording."""

    machine_id: str
    label: Label | None  # None: the name does not say (plain folders)


def parse_name(name: str, *, default_id: str = DEFAULT_ID) -> ClipName:
    """Machine ID and label from a file name.

    >>> parse_name("anomaly_id_02_00000017.wav")
    ClipName(machine_id='02', label='anomaly')
    >>> parse_name("pump-recording.wav")
    ClipName(machine_id='00', label=None)
    """
    stem = Path(name).stem
    match = _ID_PATTERN.search(stem)
    machine_id = normalize_id(match.group(1)) if match else default_id
    # Only a whole first word labels a file: "anomaly_id_00_..." is anomalous,
    # "anomalous_noise.wav" says nothing.
    first = re.split(r"[_\-. ]", stem.lower(), maxsplit=1)[0]
    label: Label | None = first if first in ("normal", "anomaly") else None  # type: ignore[assignment]
    return ClipName(machine_id=machine_id, label=label)


def normalize_id(raw: str) -> str:
    """ "6" and "06" are the same machine; IDs are compared as two-digit strings."""
    text = raw.strip()
    if not text.isdigit():
        raise DatasetError(f"machine IDs are numbers such as 00 or 06, got {raw!r}")
    return f"{int(text):02d}"


def parse_ids(text: str | None) -> tuple[str, ...] | None:
    """`"00,2, 04"` -> `("00", "02", "04")`; None or "" means every ID found."""
    if not text:
        return None
    ids = tuple(dict.fromkeys(normalize_id(part) for part in text.split(",") if part.strip()))
    return ids or None


@dataclass(frozen=True)
class ClipFile:
    path: Path
    machine_id: str
    label: Label | None


def resolve_folder(root: Path, *, machine_type: str, split: Literal["train", "test"]) -> Path:
    """The folder holding the `split` WAVs for `machine_type` under `root` (see module doc)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    for candidate in (root / machine_type / split, root / split):
        if candidate.is_dir():
            return candidate
    return root


def list_clips(
    root: Path,
    *,
    machine_type: str,
    split: Literal["train", "test"],
    ids: Sequence[str] | None = None,
) -> list[ClipFile]:
    """WAV files of `split` under `root`, sorted by path, restricted to `ids` if given.

    Raises `DatasetError` when the folder is missing, holds no WAV file, or
    holds none of a requested ID.
    """
    folder = resolve_folder(root, machine_type=machine_type, split=split)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WAV_SUFFIXES)
    if not paths:
        raise DatasetError(f"no WAV files in {folder}")
    files = [ClipFile(path=p, **vars(parse_name(p.name))) for p in paths]
    if ids is None:
        return files
    wanted = set(ids)
    found = {f.machine_id for f in files}
    missing = sorted(wanted - found)
    if missing:
        raise DatasetError(
            f"no WAV files for machine ID(s) {', '.join(missing)} in {folder}; "
            f"found ID(s) {', '.join(sorted(found))}"
        )
    return [f for f in files if f.machine_id in wanted]


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass(frozen=True)
class FeatureClip:
    """One readable recording and its (unstandardised) log-mel, shape (n_mels, t)."""

    file: ClipFile
    spec: np.ndarray
    seconds: float
    stats: ClipStats | None = None  # for the input fingerprint (service.inputcheck)
    # The long-term spectrum in dB (service.features.long_term_spectrum), for the spectrum scorer only.
    spectrum_db: np.ndarray | None = None


@dataclass
class LoadResult:
    clips: list[FeatureClip] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def hours(self) -> float:
        return sum(c.seconds for c in self.clips) / 3600.0

    def clips_per_id(self) -> dict[str, int]:
        return dict(sorted(Counter(c.file.machine_id for c in self.clips).items()))


def load_features(
    files: Sequence[ClipFile],
    *,
    params: FeatureParams,
    channel: Channel = 0,
    min_seconds: float = 0.0,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    spectrum: tuple[int, int] | None = None,
) -> LoadResult:
    """Decode each file (channel pick, resampling) and compute its log-mel.

    `spectrum` (n_fft, hop) also keeps each clip's long-term spectrum.

    A file that cannot be decoded, is shorter than `min_seconds`, or has an
    impossible layout (e.g. `channel` 1 of a mono file) is recorded in
    `skipped` with its reason; it never stops the run. Threads suffice for
    parallelism: libsndfile, soxr and numpy's FFT release the GIL. Order of
    the result follows `files`, whatever the thread scheduling.
    """

    def one(file: ClipFile) -> FeatureClip | Skipped:
        try:
            clip = read_audio(
                file.path, sample_rate=params.sample_rate, channel=channel, min_seconds=min_seconds
            )
            spec = log_mel(clip.samples, params)
        except (AudioError, FeatureError, OSError) as error:
            return Skipped(path=file.path, reason=str(error))
        stats = clip_stats(
            clip.samples,
            spec.mean(axis=1, dtype=np.float64),
            sample_rate=params.sample_rate,
            mel_hz=mel_hz,
            floor_db=params.floor_db,
        )
        spectrum_db = (
            None
            if spectrum is None
            else long_term_spectrum(clip.samples, n_fft=spectrum[0], hop=spectrum[1]).astype(np.float32)
        )
        return FeatureClip(
            file=file,
            spec=spec,
            seconds=clip.samples.size / params.sample_rate,
            stats=stats,
            spectrum_db=spectrum_db,
        )

    mel_hz = band_centres_hz(mel_filterbank(params), sample_rate=params.sample_rate, n_fft=params.n_fft)

    result = LoadResult()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for item in pool.map(one, files):
            if isinstance(item, Skipped):
                result.skipped.append(item)
            else:
                result.clips.append(item)
            if progress is not None:
                progress(1)
    return result


def split_validation(
    clips: Sequence[FeatureClip], *, fraction: float, seed: int
) -> tuple[list[FeatureClip], list[FeatureClip]]:
    """Hold out whole clips per machine ID: `round(fraction * n)` of each ID, at least 1.

    An ID with a single clip keeps it for training (nothing is left to learn
    from otherwise). Returns (train, validation), both in input order.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    by_id: dict[str, list[int]] = {}
    for index, clip in enumerate(clips):
        by_id.setdefault(clip.file.machine_id, []).append(index)
    held: set[int] = set()
    for machine_id in sorted(by_id):
        indices = by_id[machine_id]
        n_val = min(max(1, round(fraction * len(indices))), len(indices) - 1)
        if n_val > 0:
            held.update(int(i) for i in rng.choice(indices, size=n_val, replace=False))
    train = [c for i, c in enumerate(clips) if i not in held]
    val = [c for i, c in enumerate(clips) if i in held]
    return train, val


@dataclass(frozen=True)
class Normalizer:
    """Per-mel-bin standardisation statistics; `mean` and `std` have shape (n_mels,)."""

    mean: np.ndarray
    std: np.ndarray

    def apply(self, spec: np.ndarray) -> np.ndarray:
        """(n_mels, t) -> standardised (n_mels, t) float32, as `Detector.features` does."""
        standardised: np.ndarray = (spec - self.mean[:, None]) * (1.0 / self.std)[:, None]
        return standardised.astype(np.float32)


# A mel bin that never varies (digital silence, a band-limited recorder)
# would divide by ~0; 0.01 dB is far below any audible change.
MIN_STD_DB = 1e-2


def fit_normalizer(specs: Iterable[np.ndarray]) -> Normalizer:
    """Mean and std per mel bin over all frames of `specs` (each (n_mels, t)), in float64."""
    total = None
    squares = None
    count = 0
    for spec in specs:
        s = spec.astype(np.float64)
        total = s.sum(axis=1) if total is None else total + s.sum(axis=1)
        squares = (s * s).sum(axis=1) if squares is None else squares + (s * s).sum(axis=1)
        count += s.shape[1]
    if total is None or squares is None or count == 0:
        raise DatasetError("no frames to compute normalisation statistics from")
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    std = np.maximum(np.sqrt(var), MIN_STD_DB)
    return Normalizer(mean=mean.astype(np.float32), std=std.astype(np.float32))


def patch_array(specs: Sequence[np.ndarray], *, normalizer: Normalizer, layout: PatchLayout) -> np.ndarray:
    """All patches of all clips, standardised, stacked in the graph's input layout (`PatchLayout.batch`).

    Returns (N, n_mels, frames, 1) for cae or (N, frames * n_mels) for dense, float32.
    """
    parts = [layout.batch(normalizer.apply(spec))[0] for spec in specs]
    if not any(len(part) for part in parts):
        raise DatasetError(f"no clip is long enough for one patch of {layout.frames} frames")
    return np.concatenate(parts, axis=0)

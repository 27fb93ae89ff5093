"""The patch layout: how a log-mel spectrogram becomes the model's inputs, and where each patch lies.

A patch is `frames` consecutive log-mel frames; patches start every `hop`
frames from frame 0, and a tail too short for another patch is not scored
(a hop longer than a patch also leaves the frames between patches out). The
graph takes a batch of them as (N, n_mels, frames, 1) for the CAE and as
(N, frames * n_mels), consecutive frames concatenated (frame-major), for the
DCASE 2020 dense baseline. Frame k is centred on sample k * hop_length
(`service.features.log_mel`), so a patch starting at frame s spans
s * hop_length / sample_rate to (s + frames) * hop_length / sample_rate
seconds, the last one cut at the clip's end.

`PatchLayout` is the one place that knows this. `service.detector.Detector`
cuts, feeds and places its patches with it, and training cuts its Keras
training data with the same class before any ONNX model exists
(`training.dataset.patch_array`), so the two sides cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.errors import FeatureError
from service.features import FeatureParams

__all__ = ["Arch", "PatchLayout"]

Arch = Literal["cae", "dense"]


@dataclass(frozen=True)
class PatchLayout:
    """Patches of `frames` log-mel frames every `hop` frames, in `arch`'s graph layout, for `params`."""

    frames: int
    hop: int
    arch: Arch
    params: FeatureParams

    def __post_init__(self) -> None:
        if self.frames <= 0 or self.hop <= 0:
            raise FeatureError(f"patch frames and hop must be positive, got {self.frames}, {self.hop}")

    @property
    def min_samples(self) -> int:
        """Fewest samples (at the model's rate) whose log-mel holds one patch."""
        # log_mel gives 1 + n // hop_length frames.
        return (self.frames - 1) * self.params.hop_length

    @property
    def seconds_per_frame(self) -> float:
        return self.params.hop_length / self.params.sample_rate

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One patch's shape in the graph (the batch axis left out)."""
        n_mels = self.params.n_mels
        return (n_mels, self.frames, 1) if self.arch == "cae" else (self.frames * n_mels,)

    def starts(self, n_frames: int) -> np.ndarray:
        """Start frames of the patches of a spectrogram of `n_frames` frames.

        Returns
        -------
        np.ndarray [shape=(n_patches,)], int64
            Empty when the spectrogram is shorter than one patch.
        """
        if n_frames < self.frames:
            return np.empty(0, dtype=np.int64)
        return np.arange(0, n_frames - self.frames + 1, self.hop, dtype=np.int64)

    def cut(self, spec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A (standardised) log-mel spectrogram's patches and their start frames.

        Parameters
        ----------
        spec : np.ndarray [shape=(n_mels, t)]

        Returns
        -------
        patches : np.ndarray [shape=(n_patches, n_mels, frames)]
            Empty when the spectrogram is shorter than one patch.
        starts : np.ndarray [shape=(n_patches,)], int64
        """
        starts = self.starts(spec.shape[1])
        if starts.size == 0:  # sliding_window_view refuses a window longer than the array
            return np.empty((0, spec.shape[0], self.frames), dtype=spec.dtype), starts
        windows = np.lib.stride_tricks.sliding_window_view(spec, self.frames, axis=1)
        return windows[:, starts, :].transpose(1, 0, 2), starts

    def to_graph(self, cut: np.ndarray) -> np.ndarray:
        """Patches (n, n_mels, frames) in the graph's input layout, float32, C-contiguous."""
        if self.arch == "cae":
            batch = cut[..., None]
        else:
            batch = cut.transpose(0, 2, 1).reshape(len(cut), cut.shape[1] * cut.shape[2])
        return np.ascontiguousarray(batch, dtype=np.float32)

    def batch(self, spec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`cut` then `to_graph`: the graph's input for a standardised spectrogram, and the start frames."""
        cut, starts = self.cut(spec)
        return self.to_graph(cut), starts

    def by_mel(self, batch: np.ndarray) -> np.ndarray:
        """Inverse of `to_graph` for any per-value array of a batch (e.g. squared errors): (n, n_mels, frames).

        A view where the layout allows it (always for the CAE).
        """
        n, n_mels = len(batch), self.params.n_mels
        if self.arch == "cae":
            return batch.reshape(n, n_mels, -1)
        return batch.reshape(n, -1, n_mels).transpose(0, 2, 1)

    def times(self, starts: np.ndarray, *, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and end in seconds of the patches at `starts` in a clip of `n_samples`, each (n_patches,)."""
        seconds_per_frame = self.seconds_per_frame
        duration = n_samples / self.params.sample_rate
        return starts * seconds_per_frame, np.minimum((starts + self.frames) * seconds_per_frame, duration)

    def frame_means(self, by_mel: np.ndarray) -> np.ndarray:
        """Per (mel, frame) mean of per-patch values (n_patches, n_mels, frames) over the patches covering it.

        Returns shape (n_mels, (n_patches - 1) * hop + frames), float32: frames 0 to the end of
        the last patch; a frame no patch covers (a hop longer than a patch) is 0. Overlapping
        patches give a transposed view (frame-major memory).
        """
        n_patches, n_mels, frames = by_mel.shape
        hop = self.hop
        if hop == frames:  # side by side (the CAE's patching): no frame is shared
            return np.ascontiguousarray(by_mel.transpose(1, 0, 2).reshape(n_mels, n_patches * frames))
        # Summed frame by frame, each frame's mel bins side by side in memory as in the dense
        # model's batch: whole rows added at a time rather than strided columns.
        per_frame = by_mel.transpose(0, 2, 1)
        total = np.zeros(((n_patches - 1) * hop + frames, n_mels), dtype=np.float32)
        count = np.zeros((total.shape[0], 1), dtype=np.float32)
        last = (n_patches - 1) * hop + 1
        for offset in range(frames):
            total[offset : offset + last : hop] += per_frame[:, offset]
            count[offset : offset + last : hop] += 1
        np.divide(total, count, out=total, where=count > 0)
        return total.T

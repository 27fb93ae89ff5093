"""Cutting a sound card's input into clips in the watched folder (`asd-watch --device`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf

Read = Callable[[int], np.ndarray]  # frames -> (frames, channels) float32


class Recorder:
    """Writes `seconds`-long WAV clips from `read` into `folder`, each renamed into place when whole."""

    def __init__(
        self, read: Read, folder: Path, *, sample_rate: int, seconds: float = 10.0, prefix: str = "clip"
    ) -> None:
        self.read, self.folder, self.sample_rate = read, folder, sample_rate
        self.frames = round(seconds * sample_rate)
        self.prefix = prefix
        self.stop = threading.Event()
        self.written = 0

    def one_clip(self) -> Path:
        samples = self.read(self.frames)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        final = self.folder / f"{self.prefix}_{stamp}.wav"
        part = final.with_name(final.name + ".part")  # the folder scan ignores .part names
        sf.write(part, samples, self.sample_rate, subtype="PCM_16", format="WAV")
        os.replace(part, final)
        self.written += 1
        return final

    def run(self) -> None:
        while not self.stop.is_set():
            self.one_clip()


def sound_card(
    device: str | int | None, *, sample_rate: int, channels: int
) -> tuple[Read, Callable[[], None]]:
    """A blocking reader of the sound card, and its closer; needs the `sounddevice` package."""
    try:
        import sounddevice  # optional: only --device needs it
    except (ImportError, OSError) as error:  # OSError: the package is there, PortAudio is not
        raise RuntimeError(f"--device needs the sounddevice package and PortAudio ({error})") from None
    stream = sounddevice.InputStream(
        device=device, samplerate=sample_rate, channels=channels, dtype="float32"
    )
    stream.start()

    def read(frames: int) -> np.ndarray:
        data, _overflowed = stream.read(frames)
        return np.asarray(data)

    def close() -> None:
        stream.stop()
        stream.close()

    return read, close

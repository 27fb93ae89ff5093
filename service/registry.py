"""The models a process serves: every detector folder under the models folder, loaded once.

Each folder becomes one `Detector`, which holds the one onnxruntime session
that all requests in this process share (onnxruntime's `run` is thread-safe).
A folder that fails any check is kept as a broken entry with its reason,
so the API can show it, and never stops the other folders from loading.

Model names only ever come from the folder names found here; requests look
names up in this dict and never build a path from user input.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from service.bundle import MODEL_FILE, THRESHOLD_FILE, Bundle
from service.detector import Detector, DetectorError

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LoadState(StrEnum):
    LOADING = "loading"
    LOADED = "loaded"


class ModelStatus(StrEnum):
    READY = "ready"
    BROKEN = "broken"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    status: ModelStatus
    detector: Detector | None = None
    bundle: Bundle | None = None
    error: str | None = None
    load_ms: float = 0.0


def valid_name(name: str) -> bool:
    return MODEL_NAME.fullmatch(name) is not None and ".." not in name


class Registry:
    """Loaded and broken models by name; `load()` runs once, in the app's lifespan."""

    def __init__(self, models_dir: Path, *, intra_op_threads: int = 1) -> None:
        self.models_dir = Path(models_dir)
        self.intra_op_threads = intra_op_threads
        self.state = LoadState.LOADING
        self.models: dict[str, ModelEntry] = {}
        self._loaded = threading.Event()

    @property
    def loaded(self) -> bool:
        return self.state is LoadState.LOADED

    def wait(self, timeout: float | None = None) -> bool:
        """Block until `load()` finished (for tests and scripts)."""
        return self._loaded.wait(timeout)

    def ready_names(self) -> list[str]:
        return sorted(n for n, e in self.models.items() if e.status is ModelStatus.READY)

    def broken_names(self) -> list[str]:
        return sorted(n for n, e in self.models.items() if e.status is ModelStatus.BROKEN)

    def get(self, name: str) -> ModelEntry | None:
        return self.models.get(name) if valid_name(name) else None

    def load(self) -> None:
        """Load every detector folder; blocking (run it in a thread)."""
        started = time.perf_counter()
        models: dict[str, ModelEntry] = {}
        try:
            for folder in self._candidates():
                models[folder.name] = self._load_one(folder)
        finally:
            # Publish the dict in one assignment: readers see all or nothing.
            self.models = models
            self.state = LoadState.LOADED
            self._loaded.set()
        logger.info(
            "models loaded",
            extra={
                "models_dir": str(self.models_dir),
                "ready": self.ready_names(),
                "broken": self.broken_names(),
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )

    def _candidates(self) -> list[Path]:
        if not self.models_dir.is_dir():
            logger.error("models folder does not exist", extra={"models_dir": str(self.models_dir)})
            return []
        found = []
        for folder in sorted(self.models_dir.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            if not ((folder / THRESHOLD_FILE).exists() or (folder / MODEL_FILE).exists()):
                continue  # not a detector folder (e.g. reports/): nothing to say about it
            if not valid_name(folder.name):
                logger.warning("skipping model folder with an unusable name", extra={"folder": str(folder)})
                continue
            found.append(folder)
        return found

    def _load_one(self, folder: Path) -> ModelEntry:
        started = time.perf_counter()
        try:
            detector = Detector(folder, intra_op_threads=self.intra_op_threads)
            _smoke_test(detector)
        # Any failure, also one nobody foresaw (a permission error, an onnxruntime
        # error on the first run), must only take down this one model.
        except Exception as error:  # noqa: BLE001
            reason = _public_reason(error, folder)
            logger.error(
                "model is broken and will not serve",
                extra={"model": folder.name, "folder": str(folder), "error": str(error)},
            )
            return ModelEntry(folder.name, ModelStatus.BROKEN, bundle=_try_bundle(folder), error=reason)
        load_ms = (time.perf_counter() - started) * 1000
        logger.info(
            "model ready",
            extra={
                "model": folder.name,
                "arch": detector.bundle.model.arch,
                "threshold": detector.threshold,
                "intra_op_threads": self.intra_op_threads,
                "duration_ms": round(load_ms, 1),
            },
        )
        return ModelEntry(folder.name, ModelStatus.READY, detector, detector.bundle, None, load_ms)


def _smoke_test(detector: Detector) -> None:
    """Run the graph once on silence: proves it runs, and that it reconstructs its input.

    It also pays onnxruntime's first-run allocations now instead of on the first request.
    """
    if not (np.isfinite(detector.threshold) and detector.threshold > 0):
        # Decisions and score/threshold ratios need a positive threshold.
        raise DetectorError(f"threshold {detector.threshold} is not a positive number")
    silence = np.zeros(max(detector.min_samples, detector.params.n_fft), dtype=np.float32)
    batch, _ = detector.model_inputs(detector.features(silence))
    recon = detector.reconstruct(batch)
    if recon.shape != batch.shape:
        raise DetectorError(f"graph output shape {recon.shape} differs from its input shape {batch.shape}")
    if not np.isfinite(recon).all():
        raise DetectorError("graph output contains NaN or infinite values on silence")


def _public_reason(error: Exception, folder: Path) -> str:
    # DetectorError messages start with the absolute folder path: the API
    # names the model instead of showing the server's file layout.
    text = str(error).replace(f"{folder}: ", "").replace(str(folder), folder.name)
    if not isinstance(error, DetectorError):
        text = f"{type(error).__name__}: {text}"
    return text


def _try_bundle(folder: Path) -> Bundle | None:
    try:
        return Bundle.read(folder)
    except (OSError, ValueError):
        return None

"""The models a process serves: every detector folder under the models folder, loaded once.

Each folder becomes one `Detector`, which holds the one onnxruntime session
that all requests in this process share (onnxruntime's `run` is thread-safe).
A folder that fails any check is kept as a broken entry with its reason,
so the API can show it, and never stops the other folders from loading.

Model names only ever come from the folder names found here; requests look
names up in this dict and never build a path from user input.

Files changed under a running service: the sessions live in memory, so a
model keeps serving what was loaded even if its `model.onnx` or
`threshold.json` is then deleted, corrupted or replaced. `check_files()`
(run on requests, at most every `check_interval_s`) stats both files of every
loaded model; when a stat changed it hashes them again, and a model whose
files no longer match what was loaded becomes `stale` (still serving the
loaded copy, with the reason), and `ready` again if the same bytes come
back.

`reload()` (POST /v1/models/reload, or every ASD_RELOAD_INTERVAL_S) rescans the
folder: new folders load, changed ones load anew and replace the old entry in
one assignment (requests in flight keep the detector they hold and finish on
the old session), removed ones unload, and a new version that fails to load
is reported without taking the serving copy down.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np

from service.bundle import MODEL_FILE, THRESHOLD_FILE, Bundle, sha256_of
from service.detector import Detector
from service.errors import DetectorError, ReloadInProgressError

logger = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class ReloadReport:
    """What one `reload()` changed, by model name."""

    added: list[str]
    replaced: list[str]
    removed: list[str]
    unchanged: list[str]
    broken: list[str]  # failed to load; a serving copy of the same name, if any, keeps serving
    duration_ms: float

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed or self.broken)


class LoadState(StrEnum):
    LOADING = "loading"
    LOADED = "loaded"


class ModelStatus(StrEnum):
    READY = "ready"
    STALE = "stale"  # serving the loaded copy, but its files on disk changed since
    BROKEN = "broken"


SERVING = frozenset({ModelStatus.READY, ModelStatus.STALE})

# (size, mtime_ns, inode, device) of a file, or None when it cannot be stat'ed.
Stamp = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class LoadedFiles:
    """What a loaded model's files were: digests at load, stamps when last looked at."""

    paths: tuple[Path, ...]
    digests: tuple[str, ...]
    stamps: tuple[Stamp, ...]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    status: ModelStatus
    detector: Detector | None = None
    bundle: Bundle | None = None
    error: str | None = None
    load_ms: float = 0.0
    files: LoadedFiles | None = None

    @property
    def serving(self) -> bool:
        return self.status in SERVING and self.detector is not None


def valid_name(name: str) -> bool:
    return MODEL_NAME.fullmatch(name) is not None and ".." not in name


class Registry:
    """Loaded and broken models by name; `load()` runs once, in the app's lifespan."""

    def __init__(self, models_dir: Path, *, intra_op_threads: int = 1, check_interval_s: float = 2.0) -> None:
        self.models_dir = Path(models_dir)
        self.intra_op_threads = intra_op_threads
        self.state = LoadState.LOADING
        self.models: dict[str, ModelEntry] = {}
        # Why the models folder itself could not be used (missing, unreadable), for /ready.
        self.problem: str | None = None
        self.check_interval_s = check_interval_s
        self._loaded = threading.Event()
        # check_files and reload both write self.models: one at a time.
        self._check_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._last_check = time.monotonic()

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

    def stale_names(self) -> list[str]:
        return sorted(n for n, e in self.models.items() if e.status is ModelStatus.STALE)

    def serving_names(self) -> list[str]:
        """Models that answer scoring requests: ready and stale ones."""
        return sorted(n for n, e in self.models.items() if e.serving)

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
        try:
            if not self.models_dir.exists():
                return self._folder_problem("the models folder does not exist")
            if not self.models_dir.is_dir():
                return self._folder_problem("the models folder is not a folder")
            entries = sorted(self.models_dir.iterdir())
        except OSError as error:  # e.g. PermissionError: the folder cannot be listed
            return self._folder_problem(f"the models folder cannot be read ({_os_reason(error)})")
        found = []
        for folder in entries:
            if folder.name.startswith("."):
                continue
            try:
                if not folder.is_dir():
                    continue
                # exists() raises (rather than answering False) for a folder that cannot be read.
                if not ((folder / THRESHOLD_FILE).exists() or (folder / MODEL_FILE).exists()):
                    continue  # not a detector folder (e.g. reports/): nothing to say about it
            except OSError:
                pass  # unreadable: maybe a model; _load_one reports it as broken with the reason
            if not valid_name(folder.name):
                logger.warning("skipping model folder with an unusable name", extra={"folder": str(folder)})
                continue
            found.append(folder)
        if not found:
            # Not an error for the folder itself, but /ready should say why nothing serves.
            self.problem = "the models folder holds no model folder (model.onnx + threshold.json)"
            logger.error("no model folder found", extra={"models_dir": str(self.models_dir)})
        return found

    def _folder_problem(self, reason: str) -> list[Path]:
        self.problem = reason
        logger.error(
            "models folder unusable: no model will serve",
            extra={"models_dir": str(self.models_dir), "reason": reason},
        )
        return []

    def _load_one(self, folder: Path) -> ModelEntry:
        started = time.perf_counter()
        try:
            # Stamped before loading: a change during the load shows at the first check.
            paths = _model_files(folder)
            stamps = tuple(_stamp(p) for p in paths)
            detector = Detector(folder, intra_op_threads=self.intra_op_threads)
            _smoke_test(detector)
            if _model_files(folder, detector.bundle) != paths:
                paths = _model_files(folder, detector.bundle)
                stamps = tuple(_stamp(p) for p in paths)
            files = LoadedFiles(paths, tuple(sha256_of(p) for p in paths), stamps)
        # Any failure, also one nobody foresaw (a permission error, an onnxruntime
        # error on the first run), must only take down this one model.
        except Exception as error:
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
        return ModelEntry(folder.name, ModelStatus.READY, detector, detector.bundle, None, load_ms, files)

    # --- reloading in place ------------------------------------------------------------------

    def reload(self) -> ReloadReport:
        """Rescan the models folder and swap in what changed; blocking (run it in a thread).

        Raises `ReloadInProgressError` when another reload runs.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgressError("a reload is already running; try again when it has finished")
        try:
            with self._check_lock:  # no file check may write the old dict meanwhile
                return self._reload()
        finally:
            self._reload_lock.release()

    def _reload(self) -> ReloadReport:
        started = time.perf_counter()
        self.problem = None
        current = self.models
        found = {folder.name: folder for folder in self._candidates()}
        models: dict[str, ModelEntry] = {}
        added, replaced, unchanged, broken = [], [], [], []
        for name, folder in found.items():
            old = current.get(name)
            if old is not None and old.serving and _same_files(old):
                models[name] = old
                unchanged.append(name)
                continue
            entry = self._load_one(folder)
            if entry.status is ModelStatus.BROKEN:
                broken.append(name)
                if old is not None and old.serving:
                    # The new version is broken: the loaded one keeps serving, and says why.
                    entry = replace(
                        old,
                        status=ModelStatus.STALE,
                        error=f"the files on disk do not load ({entry.error}); the loaded copy keeps serving",
                    )
            elif old is None:
                added.append(name)
            else:
                replaced.append(name)
            models[name] = entry
        removed = sorted(set(current) - set(found))
        self.models = models  # one assignment: a request sees the old set or the new one
        self.state = LoadState.LOADED
        self._loaded.set()
        report = ReloadReport(
            added, replaced, removed, unchanged, broken, round((time.perf_counter() - started) * 1000, 1)
        )
        logger.info(
            "models reloaded",
            extra={
                "models_dir": str(self.models_dir),
                "added": added,
                "replaced": replaced,
                "removed": removed,
                "broken": broken,
                "duration_ms": report.duration_ms,
            },
        )
        return report

    # --- files changed under the running service ---------------------------------------------

    def check_due(self) -> bool:
        """Whether `check_files()` would look now (cheap; callers skip the thread hop when not)."""
        return self.loaded and time.monotonic() - self._last_check >= self.check_interval_s

    def check_files(self, *, force: bool = False) -> list[str]:
        """Compare every loaded model's files with what was loaded; returns the names that changed status.

        Blocking (it may hash files): run it in a thread. At most one check runs
        at a time; a caller arriving during one returns at once.
        """
        if not self.loaded or not (force or self.check_due()):
            return []
        if not self._check_lock.acquire(blocking=False):
            return []
        try:
            changed = []
            for name, entry in list(self.models.items()):
                updated = _recheck(entry)
                if updated is not entry:
                    self.models[name] = updated  # one key, one assignment: readers see old or new
                    if updated.status is not entry.status:
                        changed.append(name)
                        _log_transition(updated, self.models_dir)
            return changed
        finally:
            self._last_check = time.monotonic()
            self._check_lock.release()


def _same_files(entry: ModelEntry) -> bool:
    """Whether a loaded model's files on disk are still the bytes it was loaded from."""
    files = entry.files
    if files is None:
        return False
    if tuple(_stamp(p) for p in files.paths) == files.stamps:
        return True
    try:
        return tuple(sha256_of(p) for p in files.paths) == files.digests
    except OSError:
        return False


def _model_files(folder: Path, bundle: Bundle | None = None) -> tuple[Path, ...]:
    return (folder / THRESHOLD_FILE, folder / (bundle.model.file if bundle else MODEL_FILE))


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _recheck(entry: ModelEntry) -> ModelEntry:
    files = entry.files
    if files is None or not entry.serving:
        return entry  # broken models are not re-examined; a restart does that
    stamps = tuple(_stamp(p) for p in files.paths)
    if stamps == files.stamps:
        return entry
    # A stat changed (or a file vanished): compare the contents with what was loaded.
    problems = []
    for path, loaded, stamp in zip(files.paths, files.digests, stamps, strict=True):
        if stamp is None:
            problems.append(f"{path.name} was deleted or cannot be found")
            continue
        try:
            now = sha256_of(path)
        except OSError as error:
            problems.append(f"{path.name} cannot be read ({_os_reason(error)})")
            continue
        if now != loaded:
            problems.append(f"{path.name} changed (sha256 {now[:12]}..., loaded {loaded[:12]}...)")
    refreshed = replace(files, stamps=stamps)
    if not problems:
        return replace(entry, status=ModelStatus.READY, error=None, files=refreshed)
    reason = "; ".join(problems) + _STALE_SUFFIX
    return replace(entry, status=ModelStatus.STALE, error=reason, files=refreshed)


_STALE_SUFFIX = (
    " since this model was loaded; the loaded copy keeps serving, a restart would load the files on disk"
)


def _log_transition(entry: ModelEntry, models_dir: Path) -> None:
    if entry.status is ModelStatus.STALE:
        logger.error(
            "model files changed on disk",
            extra={"model": entry.name, "models_dir": str(models_dir), "error": entry.error},
        )
    else:
        logger.warning("model files on disk match the loaded model again", extra={"model": entry.name})


def _os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _smoke_test(detector: Detector) -> None:
    """Run the graph once on silence: proves it runs, and that it reconstructs its input.

    It also pays onnxruntime's first-run allocations now instead of on the first request.
    """
    if not (np.isfinite(detector.threshold) and detector.threshold > 0):
        # Decisions and score/threshold ratios need a positive threshold.
        raise DetectorError(f"threshold {detector.threshold} is not a positive number")
    per_id = detector.bundle.threshold.per_id or {}
    bad = [f"{mid}: {t.value}" for mid, t in per_id.items() if not (np.isfinite(t.value) and t.value > 0)]
    if bad:
        raise DetectorError(f"machine ID thresholds are not positive numbers ({', '.join(bad)})")
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

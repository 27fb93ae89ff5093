"""The watched folder: which files are complete, where they go after scoring, and the results journal.

Exactly once: every outcome is appended to the results file (JSON lines) *before* the file is
moved out of the folder, keyed by name, size and modification time. A file whose key is already
in the journal (the watcher stopped between the two steps) is moved without being sent again.
"""

from __future__ import annotations

import fnmatch
import json
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DONE = "done"
FAILED = "failed"
# Names recorders write to before renaming, and our own sub-folders, are never picked up.
_IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")


@dataclass(frozen=True)
class Candidate:
    path: Path
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        return f"{self.path.name}:{self.size}:{self.mtime_ns}"


def riff_incomplete(path: Path, size: int) -> bool:
    """True when a RIFF/WAVE header announces more bytes than the file has: still being written.

    Streaming writers put 0 or 0xFFFFFFFF there until they finish; those are left to the
    stability wait. Anything that is not RIFF is the service's to judge.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    (announced,) = struct.unpack("<I", head[4:8])
    if announced in (0, 0xFFFFFFFF):
        return False
    return bool(announced + 8 > size)


class Folder:
    """Finds complete audio files in `root` (not its sub-folders) that have not been handled."""

    def __init__(self, root: Path, *, pattern: str = "*.wav", settle_s: float = 1.0) -> None:
        self.root = root
        self.pattern = pattern.lower()
        self.settle_s = settle_s
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> size, mtime, stable since
        self._whole: set[tuple[Path, int, int]] = set()  # versions whose header said they are whole

    def matches(self, name: str) -> bool:
        lower = name.lower()
        return (
            not name.startswith(".")
            and not lower.endswith(_IGNORED_SUFFIXES)
            and fnmatch.fnmatchcase(lower, self.pattern)
        )

    def complete(self, now: float) -> Iterator[Candidate]:
        """Files unchanged for `settle_s` whose header (if WAV) says they are whole, oldest first."""
        found = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        present = set()
        for entry in entries:
            if not entry.is_file(follow_symlinks=False) or not self.matches(entry.name):
                continue
            path = Path(entry.path)
            present.add(path)
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            size, mtime = stat.st_size, stat.st_mtime_ns
            previous = self._seen.get(path)
            if previous is None or previous[:2] != (size, mtime):
                self._seen[path] = (size, mtime, now)
                if self.settle_s > 0:
                    continue
            stable = now - self._seen[path][2]
            if stable < self.settle_s or size == 0:
                continue
            # A header that announces more than is there: still being written, unless it has not
            # grown for long (the recorder died mid-file), when the service is left to judge it.
            version = (path, size, mtime)
            if version not in self._whole:
                if stable < max(30.0, 10 * self.settle_s) and riff_incomplete(path, size):
                    continue
                self._whole.add(version)
            found.append((mtime, Candidate(path, size, mtime)))
        for path in list(self._seen):
            if path not in present:
                del self._seen[path]
        self._whole = {v for v in self._whole if v[0] in present}
        yield from (c for _, c in sorted(found, key=lambda pair: (pair[0], pair[1].path.name)))

    def pending(self) -> int:
        """Files waiting in the folder (complete or not)."""
        try:
            return sum(1 for e in os.scandir(self.root) if e.is_file() and self.matches(e.name))
        except FileNotFoundError:
            return 0

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def move(self, candidate: Candidate, where: str) -> Path:
        """Into `root/where/`, never over an earlier file of the same name."""
        target_dir = self.root / where
        target_dir.mkdir(exist_ok=True)
        target = target_dir / candidate.path.name
        n = 1
        while target.exists():
            target = target_dir / f"{candidate.path.stem}.{n}{candidate.path.suffix}"
            n += 1
        os.replace(candidate.path, target)
        self.forget(candidate.path)
        return target


class Journal:
    """The results file: one JSON object per handled file, flushed to disk before the file moves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.keys: set[str] = set()
        # After a failed write the file may end mid-line; the next record starts on a fresh one.
        self._cut = path.is_file() and path.stat().st_size > 0 and not _ends_with_newline(path)
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short when the disk filled up
                    if isinstance(record, dict) and isinstance(record.get("key"), str):
                        self.keys.add(record["key"])

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """One write and one fsync; raises OSError (e.g. a full disk), and then none counts as recorded."""
        text = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            data = (("\n" if self._cut else "") + text).encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {self.path} (disk full?)")
                os.fsync(fd)
            except OSError:
                self._cut = True
                raise
            finally:
                os.close(fd)
            self._cut = False
            self.keys.update(r["key"] for r in records)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"

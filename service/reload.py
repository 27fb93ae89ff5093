"""Telling every worker of one `asd-serve` to rescan its models folder.

A POST /v1/models/reload reaches one uvicorn worker. That worker reloads and then writes a new
token into a file all workers share (its path in ASD_RELOAD_SIGNAL, made by `service.main.run`
when there are several workers); each worker's background task sees the token change within
`POLL_S` and reloads too. One worker alone needs no file.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

SIGNAL_ENV = "ASD_RELOAD_SIGNAL"
POLL_S = 0.5


class ReloadSignal:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seen = self._read()

    @classmethod
    def from_env(cls) -> ReloadSignal:
        value = os.environ.get(SIGNAL_ENV)
        return cls(Path(value) if value else None)

    def _read(self) -> str | None:
        if self.path is None:
            return None
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError:
            return None

    def announce(self) -> bool:
        """Tell the other workers; False when there are none to tell."""
        if self.path is None:
            return False
        token = f"{os.getpid()}-{time.time_ns()}"
        # Written whole, then renamed: a worker never reads half a token.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".reload-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token)
        os.replace(tmp, self.path)
        self.seen = token
        return True

    def changed(self) -> bool:
        """Whether another worker announced a reload since this one last looked."""
        token = self._read()
        if token is None or token == self.seen:
            return False
        self.seen = token
        return True

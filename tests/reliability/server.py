"""A real `asd-serve` (uvicorn, N workers) on a free 127.0.0.1 port, for the tests and the soak script.

Only loopback: the service is started on 127.0.0.1 and every helper here talks to it there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def asd_serve_command() -> list[str]:
    """The installed `asd-serve` beside this interpreter, else the same entry point through -c."""
    script = Path(sys.executable).with_name("asd-serve")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from service.main import run; run()"]


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            found += [int(p) for p in text.split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def rss_kib(pid: int) -> int:
    """Resident set size of one process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class Server:
    """`with Server(models_dir, workers=2) as server:` ... `server.base`, `server.worker_pids()`."""

    def __init__(
        self,
        models_dir: Path,
        log_path: Path,
        *,
        workers: int = 2,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        stdout: Any = None,
        stderr_path: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.workers = workers
        self.log_path = log_path
        self.stderr_path = stderr_path
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("ASD_") and k != "PROMETHEUS_MULTIPROC_DIR"
            },
            "ASD_HOST": HOST,
            "ASD_PORT": str(self.port),
            "ASD_MODELS_DIR": str(models_dir),
            "ASD_WORKERS": str(workers),
            **(env or {}),
        }
        self.env.pop("HOST", None)
        self.env.pop("PORT", None)
        self.prefix = list(prefix)
        self._stdout = stdout
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        out = self._stdout if self._stdout is not None else open(self.log_path, "wb")  # noqa: SIM115
        err = open(self.stderr_path, "wb") if self.stderr_path else subprocess.STDOUT  # noqa: SIM115
        self.process = subprocess.Popen(
            [*self.prefix, *asd_serve_command()],
            env=self.env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the whole group can be ended, workers included
        )
        if self._stdout is None:
            out.close()
        if err is not subprocess.STDOUT:
            err.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            # Only this server's own process group (start_new_session above).
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    # --- what the test asks the server -------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (spawned children that are not multiprocessing helpers)."""
        assert self.process is not None
        if self.workers == 1:
            return [self.process.pid]
        return sorted(
            pid
            for pid in children(self.process.pid)
            if "spawn_main" in cmdline(pid) and "resource_tracker" not in cmdline(pid)
        )

    def workers_rss_kib(self) -> int:
        return sum(rss_kib(pid) for pid in self.worker_pids())

    def wait_ready(self, *, timeout: float = 120, all_workers: bool = True) -> None:
        """Until /ready answers 200 on fresh connections (several times, so that every worker did)."""
        deadline = time.monotonic() + timeout
        in_a_row, needed = 0, (4 * self.workers if all_workers else 1)
        last: object = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"asd-serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                last = httpx.get(f"{self.base}/ready", timeout=10, headers={"Connection": "close"})
                in_a_row = in_a_row + 1 if last.status_code == 200 else 0
                if in_a_row >= needed and (self.workers == 1 or len(self.worker_pids()) == self.workers):
                    return
            except httpx.TransportError as error:
                last, in_a_row = error, 0
            time.sleep(0.1 if in_a_row else 0.3)
        raise AssertionError(f"{self.base}/ready not 200 within {timeout} s: {last!r}\n{self.log_tail()}")

    def wait_answering(self, path: str = "/health", *, timeout: float = 60) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                return httpx.get(f"{self.base}{path}", timeout=10, headers={"Connection": "close"})
            except httpx.TransportError as error:
                last = error
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"asd-serve exited with {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise AssertionError(f"{self.base}{path} not answering within {timeout} s: {last!r}")

    def log_text(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        if self.stderr_path and self.stderr_path.exists():
            text += self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return text

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                lines.append(value)
        return lines

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])


def drop_file_permission_override() -> list[str]:
    """A command prefix under which even root obeys file permissions (or [] when not root).

    Root bypasses `chmod 000` through CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH; `setpriv`
    removes both from the bounding set, so the service runs as root but without them.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ["<no setpriv>"]
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]

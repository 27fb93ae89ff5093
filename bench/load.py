"""The service over HTTP: `asd-serve` in a subprocess on loopback, and a load generator.

The server is the real entry point (`.venv/bin/asd-serve`, uvicorn with
ASD_WORKERS workers) started with its environment only: ASD_PORT on a free
port, ASD_MODELS_DIR, ASD_WORKERS. Its logs go to a file.

The load generator is httpx.AsyncClient on asyncio in the benchmark's own
process: `concurrency` tasks, each on its own keep-alive connection, send
the clips one request after another (multipart/form-data, field `file`,
as the README shows) until `requests` answers have come back; each
request's latency is from sending to having read the whole answer. The
multipart bodies are encoded once up front so that the generator spends
its CPU on HTTP, not on re-encoding the same bytes (it shares the machine
with the server).

Cold start is process start (`Popen`) to the first 200 from `/ready`.
Resident memory is VmRSS (and the peak, VmHWM) from /proc/<pid>/status of
each worker: the uvicorn master's `multiprocessing` children with several
workers, the master itself with one.

`python -m bench.load` runs only this part, on a models folder of your
choice (the shipped `models/` by default) and the benchmark's clips: one
server per worker count, a warm-up, then one load run, printed with each
worker's part of the server CPU (how evenly the connections were spread).
`--env NAME=VALUE` passes settings to the server, to compare two of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.detector import Clip

REPO = Path(__file__).resolve().parents[1]


def asd_serve_command() -> list[str]:
    """The installed `asd-serve` script next to this interpreter, else `python -c` its entry point."""
    script = Path(sys.executable).with_name("asd-serve")
    if script.exists():
        return [str(script)]
    found = shutil.which("asd-serve")
    if found:
        return [found]
    return [sys.executable, "-c", "from service.main import run; run()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A running `asd-serve`; use as a context manager or call `stop()`."""

    process: subprocess.Popen[bytes]
    port: int
    workers: int
    log_path: Path
    started: float = 0.0  # perf_counter at Popen
    started_wall: float = 0.0  # time.time() at Popen, to place the server's log lines
    cold_start_s: float = float("nan")  # Popen to the first /ready 200
    all_ready_s: float = float("nan")  # Popen to every worker loaded

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the master's spawned workers, or the master alone."""
        if self.workers == 1:
            return [self.process.pid]
        return [
            pid
            for pid in _children(self.process.pid)
            if "multiprocessing" in _cmdline(pid) and "resource_tracker" not in _cmdline(pid)
        ]

    def phases(self) -> dict[str, float]:
        """Seconds from Popen to the start-up steps the server logs (the last worker's, with several).

        master: uvicorn's parent process is up (its imports done); workers: every
        worker process has imported the app and started; loaded: every worker's
        models are loaded (the registry's "models loaded" line).
        """
        import json
        from datetime import datetime

        found: dict[str, list[float]] = {"master": [], "workers": [], "loaded": []}
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                at = datetime.fromisoformat(record["time"]).timestamp() - self.started_wall
            except (ValueError, KeyError, TypeError):
                continue
            message = str(record.get("message", ""))
            if message.startswith("Started parent process"):
                found["master"].append(at)
            elif message.startswith("Started server process"):
                found["workers"].append(at)
            elif message == "models loaded":
                found["loaded"].append(at)
        if self.workers == 1 and not found["master"]:
            found["master"] = found["workers"][:1]
        return {k: round(max(v), 3) if v else float("nan") for k, v in found.items()}

    def mapped_packages(
        self, names: Sequence[str] = ("scipy", "numba", "llvmlite", "tensorflow", "librosa")
    ) -> list[str]:
        """Which of these packages have native code mapped into any worker (so were imported)."""
        found: set[str] = set()
        for pid in self.worker_pids():
            try:
                with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
                    text = handle.read()
            except OSError:
                continue
            found.update(
                name for name in names if f"/site-packages/{name}/" in text or f"/{name}.libs/" in text
            )
        return sorted(found)

    def memory(self) -> list[dict[str, float]]:
        """VmRSS and VmHWM in MB of each worker process."""
        return [{"pid": pid, **_status_mb(pid, ("VmRSS", "VmHWM"))} for pid in self.worker_pids()]

    def model_precision(self, name: str) -> str | None:
        """The precision the server reports for model `name` (GET /v1/models/{name}); None if none."""
        answer = httpx.get(f"{self.url}/v1/models/{name}", timeout=10.0)
        answer.raise_for_status()
        precision = answer.json().get("precision")
        return str(precision) if precision else None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    models_dir: Path,
    *,
    workers: int,
    log_dir: Path,
    default_model: str = "slider",
    extra_env: dict[str, str] | None = None,
    ready_timeout: float = 120.0,
) -> Server:
    """Start `asd-serve` and wait for /ready; `cold_start_s` is Popen to the first 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASD_") and k not in ("HOST", "PORT")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        ASD_HOST="127.0.0.1",
        ASD_PORT=str(port),
        ASD_WORKERS=str(workers),
        ASD_MODELS_DIR=str(models_dir),
        ASD_DEFAULT_MODEL=default_model,
    )
    env.update(extra_env or {})
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{workers}w-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
    started, started_wall = time.perf_counter(), time.time()
    process = subprocess.Popen(
        asd_serve_command(),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(REPO),
        start_new_session=True,
    )
    log.close()
    server = Server(
        process=process,
        port=port,
        workers=workers,
        log_path=log_path,
        started=started,
        started_wall=started_wall,
    )
    deadline = started + ready_timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"asd-serve exited with {process.returncode}; see {log_path}")
            try:
                if client.get(f"{server.url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                server.stop()
                raise TimeoutError(f"asd-serve not ready within {ready_timeout} s; see {log_path}")
            time.sleep(0.01)
    server.cold_start_s = time.perf_counter() - started
    if workers > 1:
        _wait_for_workers(server, ready_timeout=max(0.0, deadline - time.perf_counter()))
    else:
        server.all_ready_s = server.cold_start_s
    return server


def _wait_for_workers(server: Server, *, ready_timeout: float) -> None:
    """With several workers the first /ready 200 comes from one of them: wait for all.

    Each worker logs "models loaded" when its registry is loaded; `all_ready_s`
    is Popen to the last of those lines (NaN if the log never shows them all).
    """
    deadline = time.perf_counter() + ready_timeout
    while time.perf_counter() < deadline:
        text = server.log_path.read_text(encoding="utf-8", errors="replace")
        if text.count("models loaded") >= server.workers and len(server.worker_pids()) >= server.workers:
            server.all_ready_s = time.perf_counter() - server.started
            return
        time.sleep(0.01)


def encode_multipart(clip: Clip, boundary: str) -> bytes:
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{clip.name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + clip.data + f"\r\n--{boundary}--\r\n".encode()


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    ok: int
    errors: int  # non-200 answers and transport errors
    error_kinds: dict[str, int]
    elapsed_s: float
    latencies_ms: list[float] = field(repr=False)
    server_cpu_ms: float = float("nan")  # CPU time of the worker processes per answered request
    client_cpu_ms: float = float("nan")  # CPU time of the load generator (this process) per request
    # Each worker's share of that server CPU, in worker order: how evenly the kernel spread the connections.
    worker_cpu_shares: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def _run_load(
    url: str,
    bodies: Sequence[bytes],
    content_type: str,
    *,
    concurrency: int,
    requests: int,
    path: str,
    timeout: float,
) -> LoadResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    kinds: dict[str, int] = {}
    next_index = 0
    headers = {"Content-Type": content_type}

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                index = next_index
                next_index += 1
                body = bodies[index % len(bodies)]
                sent = time.perf_counter()
                try:
                    response = await client.post(path, content=body, headers=headers)
                    await response.aread()
                    kind = None if response.status_code == 200 else f"HTTP {response.status_code}"
                except httpx.HTTPError as error:
                    kind = type(error).__name__
                if kind is None:
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    kinds[kind] = kinds.get(kind, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return LoadResult(
        concurrency=concurrency,
        requests=requests,
        ok=len(latencies),
        errors=sum(kinds.values()),
        error_kinds=kinds,
        elapsed_s=elapsed,
        latencies_ms=latencies,
    )


class LoadGenerator:
    """Multipart uploads of `clips`, round robin, at a given concurrency."""

    def __init__(
        self,
        url: str,
        clips: Sequence[Clip],
        *,
        path: str = "/v1/score",
        timeout: float = 120.0,
        server_pids: Sequence[int] = (),
    ) -> None:
        self.server_pids = list(server_pids)
        self.url = url
        self.path = path
        self.timeout = timeout
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        self.bodies = [encode_multipart(c, boundary) for c in clips]
        self.sent = 0

    def run(self, *, concurrency: int, requests: int) -> LoadResult:
        server_before = [_cpu_seconds(pid) for pid in self.server_pids]
        client_before = time.process_time()
        result = asyncio.run(
            _run_load(
                self.url,
                self.bodies,
                self.content_type,
                concurrency=concurrency,
                requests=requests,
                path=self.path,
                timeout=self.timeout,
            )
        )
        client = time.process_time() - client_before
        per_worker = [
            _cpu_seconds(pid) - before for pid, before in zip(self.server_pids, server_before, strict=True)
        ]
        server = sum(per_worker)
        if result.ok:
            result.client_cpu_ms = client * 1000 / requests
            if self.server_pids:
                result.server_cpu_ms = server * 1000 / result.ok
        if server > 0:
            result.worker_cpu_shares = [w / server for w in per_worker]
        self.sent += requests
        return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (/proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _status_mb(pid: int, keys: Sequence[str]) -> dict[str, float]:
    values = {key: float("nan") for key in keys}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in values:
                    values[name] = int(rest.split()[0]) / 1024  # kB -> MB
    except OSError:
        pass
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description="asd-serve on loopback under the benchmark's load."
    )
    parser.add_argument(
        "--models", type=Path, default=REPO / "models", help="models folder (default models/)"
    )
    parser.add_argument("--model", default="slider", help="ASD_DEFAULT_MODEL (default slider)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=16, help="requests before the measured run")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="server setting")
    args = parser.parse_args(argv)
    if not (args.models / args.model).is_dir():
        parser.error(f"no model folder {args.models / args.model}")
    if min(args.workers) < 1 or args.concurrency < 1 or args.requests < 1 or args.warmup < 0:
        parser.error("--workers, --concurrency and --requests must be at least 1, --warmup at least 0")
    extra_env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env takes NAME=VALUE, not {item!r}")
        extra_env[name] = value

    from bench.detector import make_synthetic_data, real_clips, synthetic_test_clips

    with tempfile.TemporaryDirectory(prefix="asd-load-") as work:
        # The clips of `make bench`: 200 synthetic 10 s slider clips and the real recordings.
        root = make_synthetic_data(
            Path(work) / "data", n_train=0, n_test_normal=55, n_test_anomaly=45, seconds=10.0
        )
        clips = synthetic_test_clips(root) + real_clips()
        for workers in args.workers:
            with start_server(
                args.models,
                workers=workers,
                log_dir=Path(work) / "logs",
                default_model=args.model,
                extra_env=extra_env,
            ) as server:
                generator = LoadGenerator(server.url, clips, server_pids=server.worker_pids())
                generator.run(concurrency=args.concurrency, requests=args.warmup)
                result = generator.run(concurrency=args.concurrency, requests=args.requests)
            split = " / ".join(f"{100 * share:.0f}" for share in result.worker_cpu_shares)
            kinds = f" {result.error_kinds}" if result.error_kinds else ""
            print(
                f"{workers} worker(s), concurrency {args.concurrency}, {args.requests} requests: "
                f"{result.throughput:.1f} clips/s, p50 {result.percentile(50):.1f} ms, "
                f"p99 {result.percentile(99):.1f} ms, errors {result.errors}{kinds}, server CPU "
                f"{result.server_cpu_ms:.1f} ms/request, per-worker CPU split {split or '-'} %, "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

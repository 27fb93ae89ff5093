"""Load and soak: many requests, good and bad, at once, against a real `asd-serve` on 127.0.0.1.

    python -m tests.reliability.soak                     # 10,000 requests, concurrency 32, 2 workers
    python -m tests.reliability.soak --requests 500      # the short run `make test` does
    make soak                                            # the same as the first line

It starts `asd-serve` (2 uvicorn workers, an API key, a 1 MiB upload limit) on a
free loopback port, waits until every worker is ready, then sends a fixed mix of
requests from `--concurrency` clients: good clips (multipart and raw), clips
trickled in small pieces with pauses (with and without Content-Length), batches,
undecodable and truncated audio, clips too short, bodies over the limit, wrong
keys, probes, and clients that hang up mid-upload. Every request has an expected
status; it records each answer's status and latency, transport errors (a
dropped connection), and the workers' resident memory after the 1,000th request
and at the end. It passes (exit 0) with no 5xx, no dropped connection, no
unexpected status, no worker restarted, no 5xx in the server's own log, and
worker RSS growth under 10 % from the 1,000th request to the last (checked
from 2,000 requests up). The summary is printed as JSON (and written to --json).

Only 127.0.0.1 is ever a target; the run is bounded in requests and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.reliability.server import HOST, Server
from tests.service.sounds import encode, noise

KEY = "soak-key-4c1d2e"
LIMIT = 1024 * 1024
RSS_FROM = 1000  # the request after which memory is the baseline
RSS_GROWTH_MAX = 0.10
KEEPALIVE_EXPIRY_S = 2.0  # below uvicorn's timeout_keep_alive (5 s)


@dataclass
class Payloads:
    clip: bytes = field(default_factory=lambda: encode(noise(2.0, seed=1)))
    clip_8ch: bytes = field(default_factory=lambda: encode(noise(1.5, channels=8, seed=2)))
    # 0.1 s: shorter than one patch of any shipped model (CAE 8 frames = 0.22 s, dense 5 = 0.13 s).
    short: bytes = field(default_factory=lambda: encode(noise(0.1, seed=3)))
    garbage: bytes = field(
        default_factory=lambda: np.random.default_rng(4).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    )
    oversize: bytes = field(default_factory=lambda: encode(noise(40.0, seed=5)))  # ~1.28 MB > 1 MiB

    @property
    def truncated(self) -> bytes:
        return self.clip[:30]


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: the connection failed (dropped)
    seconds: float
    error: str | None = None
    expected: bool = True


def _files(name: str, data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, data, "audio/wav")}


async def _trickle(data: bytes, pieces: int, pause: float) -> AsyncIterator[bytes]:
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        yield data[start : start + step]
        await asyncio.sleep(pause)


class Load:
    def __init__(self, base: str, port: int, payloads: Payloads) -> None:
        self.base = base
        self.port = port
        self.p = payloads
        self.auth = {"X-API-Key": KEY}
        # kind -> (weight, request coroutine factory, expected statuses)
        self.kinds: dict[str, tuple[int, Callable[[httpx.AsyncClient], Any], set[int]]] = {
            "score-multipart": (30, self.score_multipart, {200}),
            "score-raw": (12, self.score_raw, {200}),
            "score-8ch-mean": (5, self.score_8ch, {200}),
            "batch": (4, self.batch, {200}),
            "trickle-length": (4, self.trickle_length, {200}),
            "trickle-chunked": (3, self.trickle_chunked, {200}),
            "garbage": (8, self.garbage, {400}),
            "truncated": (4, self.truncated, {400}),
            "too-short": (4, self.too_short, {422}),
            "oversize": (4, self.oversize, {413}),
            "wrong-key": (5, self.wrong_key, {401}),
            "no-key": (3, self.no_key, {401}),
            "ready": (5, self.ready, {200}),
            "models": (4, self.models, {200}),
            "health": (3, self.health, {200}),
            "hang-up": (2, self.hang_up, {499}),
        }

    # --- one request of each kind -------------------------------------------------------------

    async def score_multipart(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/score", files=_files("a.wav", self.p.clip), headers=self.auth)

    async def score_raw(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(
            "/v1/score", content=self.p.clip, headers={**self.auth, "content-type": "audio/wav"}
        )

    async def score_8ch(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(
            "/v1/models/slider/score?channel=mean", files=_files("m.wav", self.p.clip_8ch), headers=self.auth
        )

    async def batch(self, c: httpx.AsyncClient) -> httpx.Response:
        files = [
            ("files", ("a.wav", self.p.clip)),
            ("files", ("b.wav", self.p.garbage)),
            ("files", ("c.wav", self.p.short)),
        ]
        return await c.post("/v1/models/slider/score/batch", files=files, headers=self.auth)

    async def trickle_length(self, c: httpx.AsyncClient) -> httpx.Response:
        headers = {**self.auth, "content-type": "audio/wav", "content-length": str(len(self.p.clip))}
        return await c.post("/v1/score", content=_trickle(self.p.clip, 8, 0.05), headers=headers)

    async def trickle_chunked(self, c: httpx.AsyncClient) -> httpx.Response:
        headers = {**self.auth, "content-type": "audio/wav"}
        return await c.post("/v1/score", content=_trickle(self.p.clip, 6, 0.05), headers=headers)

    async def garbage(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/score", files=_files("g.wav", self.p.garbage), headers=self.auth)

    async def truncated(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(
            "/v1/score", content=self.p.truncated, headers={**self.auth, "content-type": "audio/wav"}
        )

    async def too_short(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/score", files=_files("s.wav", self.p.short), headers=self.auth)

    async def oversize(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(
            "/v1/score", content=self.p.oversize, headers={**self.auth, "content-type": "audio/wav"}
        )

    async def wrong_key(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/v1/score", files=_files("a.wav", self.p.clip), headers={"X-API-Key": KEY + "0"})

    async def no_key(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.get("/v1/models")

    async def ready(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.get("/ready")

    async def models(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.get("/v1/models", headers=self.auth)

    async def health(self, c: httpx.AsyncClient) -> httpx.Response:
        return await c.get("/health")

    async def hang_up(self, _: httpx.AsyncClient) -> int:
        """A client that sends half a clip and closes its connection: the server must shrug it off."""
        _reader, writer = await asyncio.open_connection(HOST, self.port)
        head = (
            f"POST /v1/score HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: audio/wav\r\nContent-Length: {len(self.p.clip)}\r\n\r\n"
        ).encode()
        writer.write(head + self.p.clip[: len(self.p.clip) // 2])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        await writer.wait_closed()
        return 499  # nothing comes back; the server log must show 499, never a 5xx

    # --- the run ----------------------------------------------------------------------------

    def plan(self, n: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        names = list(self.kinds)
        weights = [self.kinds[k][0] for k in names]
        return rng.choices(names, weights=weights, k=n)


@dataclass
class Report:
    outcomes: list[Outcome]
    rss_at: dict[int, int]
    wall_s: float
    pids_before: list[int]
    pids_after: list[int]
    server_5xx_logged: int
    server_499_logged: int
    server_requests_logged: int

    def summary(self) -> dict[str, Any]:
        statuses = Counter(str(o.status) for o in self.outcomes if o.status is not None)
        dropped = [o for o in self.outcomes if o.status is None]
        unexpected = [o for o in self.outcomes if o.status is not None and not o.expected]
        latencies = sorted(o.seconds for o in self.outcomes if o.status is not None and o.kind != "hang-up")
        by_kind: dict[str, list[float]] = defaultdict(list)
        for o in self.outcomes:
            if o.status is not None:
                by_kind[o.kind].append(o.seconds)
        marks = sorted(self.rss_at)
        first = self.rss_at.get(RSS_FROM)
        last = self.rss_at[marks[-1]] if marks else None
        growth = (last - first) / first if first and last else None
        return {
            "requests": len(self.outcomes),
            "wall_s": round(self.wall_s, 1),
            "requests_per_s": round(len(self.outcomes) / self.wall_s, 1) if self.wall_s else None,
            "statuses": dict(sorted(statuses.items())),
            "server_errors_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
            "dropped_connections": len(dropped),
            "dropped_examples": [f"{o.kind}: {o.error}" for o in dropped[:5]],
            "unexpected": len(unexpected),
            "unexpected_examples": [f"{o.kind}: {o.status} {o.error}" for o in unexpected[:5]],
            "latency_ms": _percentiles(latencies),
            "latency_ms_by_kind": {k: _percentiles(sorted(v)) for k, v in sorted(by_kind.items())},
            "workers_rss_mib": {str(k): round(v / 1024, 1) for k, v in sorted(self.rss_at.items())},
            "rss_growth_from_request_1000": round(growth, 4) if growth is not None else None,
            "worker_pids_before": self.pids_before,
            "worker_pids_after": self.pids_after,
            "server_5xx_logged": self.server_5xx_logged,
            "server_499_logged": self.server_499_logged,
            # Equal to the answers plus hang-ups when every request reached the app.
            "server_requests_logged": self.server_requests_logged,
        }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)

    return {
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(values[-1] * 1000, 1),
        "mean": round(statistics.fmean(values) * 1000, 1),
    }


async def _drive(
    load: Load, plan: list[str], concurrency: int, on_done: Callable[[int], None]
) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * len(plan)
    next_index = 0
    done = 0
    # Idle connections are dropped by the client before uvicorn's 5 s keep-alive timeout
    # closes them: at equal timeouts a request can be written into a connection the
    # server is closing (the classic keep-alive race; seen once in 30,000 requests).
    limits = httpx.Limits(
        max_connections=concurrency,
        max_keepalive_connections=concurrency,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    timeout = httpx.Timeout(120.0, connect=30.0)
    async with httpx.AsyncClient(base_url=load.base, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal next_index, done
            while next_index < len(plan):
                index = next_index
                next_index += 1
                kind = plan[index]
                _, call, expected = load.kinds[kind]
                started = time.perf_counter()
                try:
                    answer = await call(client)
                    status = answer if isinstance(answer, int) else answer.status_code
                    ok = status in expected
                    error = None if ok else (answer.text[:200] if not isinstance(answer, int) else None)
                    outcomes[index] = Outcome(kind, status, time.perf_counter() - started, error, ok)
                except (httpx.TransportError, OSError) as failure:
                    outcomes[index] = Outcome(
                        kind,
                        None,
                        time.perf_counter() - started,
                        f"{type(failure).__name__}: {failure}",
                        False,
                    )
                done += 1
                on_done(done)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [o for o in outcomes if o is not None]


def start_server(models: Path, workdir: Path, *, workers: int = 2, log_level: str = "INFO") -> Server:
    """`asd-serve` as the soak wants it: an API key and a 1 MiB limit (started, not yet ready)."""
    models_copy = workdir / "models"
    if not models_copy.exists():
        shutil.copytree(models, models_copy)
    server = Server(
        models_copy,
        workdir / "server.log",
        workers=workers,
        env={"ASD_API_KEY": KEY, "ASD_MAX_UPLOAD_SIZE": str(LIMIT), "ASD_LOG_LEVEL": log_level},
    )
    server.start()
    return server


def run_against(
    server: Server, *, requests: int, concurrency: int, seed: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """The load on a ready server; the summary (see `verdict` for what must hold)."""
    pids_before = server.worker_pids()
    logged_before = len([line for line in server.log_lines() if line.get("message") == "request"])
    load = Load(server.base, server.port, Payloads())
    plan = load.plan(requests, seed)
    rss_at: dict[int, int] = {0: server.workers_rss_kib()}
    step = max(100, requests // 20)

    def on_done(count: int) -> None:
        if count in (RSS_FROM, requests) or count % step == 0:
            rss_at[count] = server.workers_rss_kib()
            if count % (step * 4) == 0:
                log(f"  {count}/{requests} requests, workers RSS {rss_at[count] / 1024:.0f} MiB")

    started = time.perf_counter()
    outcomes = asyncio.run(_drive(load, plan, concurrency, on_done))
    wall = time.perf_counter() - started
    time.sleep(0.5)  # the last log lines
    logged = [line for line in server.log_lines() if line.get("message") == "request"][logged_before:]
    report = Report(
        outcomes=outcomes,
        rss_at=rss_at,
        wall_s=wall,
        pids_before=pids_before,
        pids_after=server.worker_pids(),
        server_5xx_logged=sum(1 for line in logged if int(line.get("status", 0)) >= 500),
        server_499_logged=sum(1 for line in logged if line.get("status") == 499),
        server_requests_logged=len(logged),
    )
    return report.summary()


def verdict(summary: dict[str, Any], *, check_rss: bool) -> list[str]:
    """What failed (empty when the run held)."""
    problems = []
    if summary["server_errors_5xx"]:
        problems.append(f"{summary['server_errors_5xx']} answers were 5xx")
    if summary["server_5xx_logged"]:
        problems.append(f"the server logged {summary['server_5xx_logged']} 5xx")
    if summary["dropped_connections"]:
        problems.append(
            f"{summary['dropped_connections']} dropped connections: {summary['dropped_examples']}"
        )
    if summary["unexpected"]:
        problems.append(f"{summary['unexpected']} unexpected statuses: {summary['unexpected_examples']}")
    if summary["worker_pids_before"] != summary["worker_pids_after"]:
        problems.append(f"workers changed: {summary['worker_pids_before']} -> {summary['worker_pids_after']}")
    growth = summary["rss_growth_from_request_1000"]
    if check_rss and (growth is None or growth >= RSS_GROWTH_MAX):
        problems.append(
            f"workers' RSS grew {growth} from request {RSS_FROM} to the last (limit {RSS_GROWTH_MAX})"
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[2] / "models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server log) for a look")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="asd-soak-"))
    try:
        print(
            f"soak: {args.requests} requests, concurrency {args.concurrency}, "
            f"{args.workers} workers ({workdir})"
        )
        with start_server(args.models, workdir, workers=args.workers) as server:
            server.wait_ready(timeout=180)
            summary = run_against(
                server, requests=args.requests, concurrency=args.concurrency, seed=args.seed
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    problems = verdict(summary, check_rss=args.requests >= 2 * RSS_FROM)
    for problem in problems:
        print(f"FAILED: {problem}")
    print("soak: held" if not problems else "soak: FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

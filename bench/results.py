"""What one benchmark run measured (`bench.run` fills it, `bench.report` renders it), and reading it back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class HttpRow:
    workers: int
    concurrency: int
    requests: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    throughput: float
    p50: float
    p95: float
    p99: float
    mean_ms: float
    seconds: float
    server_cpu_ms: float = float("nan")  # per request, all worker processes
    client_cpu_ms: float = float("nan")  # per request, the load generator
    worker_cpu_shares: list[float] = field(default_factory=list)  # each worker's part of the server CPU


@dataclass
class ServerRow:
    workers: int
    cold_start_s: list[float]  # Popen to the first /ready 200, per start
    all_ready_s: list[float]  # Popen to every worker loaded
    phases: list[dict[str, float]]  # per start: seconds from Popen to master up, workers up, models loaded
    requests_served: int
    memory: list[dict[str, float]]  # per worker: pid, VmRSS, VmHWM (MB)
    settings: dict[str, object]
    heavy_packages_loaded: list[str] = field(default_factory=list)  # scipy, numba, ... mapped into a worker


@dataclass
class Results:
    started_at: str
    machine: dict[str, Any]
    load_at_end: tuple[float, float, float] | None
    config: dict[str, Any]
    commands: list[str]
    clips: dict[str, Any]
    detector: dict[str, Any]
    ours: dict[str, Any] | None
    naive: dict[str, Any] | None
    checks: dict[str, float]
    http: list[HttpRow]
    servers: list[ServerRow]
    duration_s: float = 0.0
    imports: dict[str, Any] = field(default_factory=dict)  # bench.startup.ImportProfile of building the app
    ours_one_thread: dict[str, Any] | None = None  # ours' whole score_upload with 1 onnxruntime thread
    peer: dict[str, Any] | None = None  # librosa + onnxruntime's default session on the same graph
    int8: dict[str, Any] = field(default_factory=dict)  # bench.precision.measure: fp32 against int8
    floor: dict[str, Any] = field(default_factory=dict)  # bench.floor.measure, plus "reached"


def load_results(path: Path) -> Results:
    """Results saved with --json, to render them again."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data["http"] = [HttpRow(**row) for row in data.get("http", [])]
    data["servers"] = [ServerRow(**row) for row in data.get("servers", [])]
    known = set(Results.__dataclass_fields__)
    return Results(**{k: v for k, v in data.items() if k in known})

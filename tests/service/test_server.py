"""The real thing: `asd-serve`'s run() under uvicorn with two workers, spoken to over TCP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import DEFAULT_MODEL
from tests.service.live import asd_serve


def score_when_ready(base: str, path: Path, *, timeout: float = 60) -> httpx.Response:
    """POST a clip; a worker still loading answers 503, so try again."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.post(
            f"{base}/v1/score",
            files={"file": (path.name, path.read_bytes())},
            timeout=30,
            headers={"Connection": "close"},
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_asd_serve_with_two_workers(models_dir, real_recordings, tmp_path):
    log = tmp_path / "server.log"
    with asd_serve(models_dir, log, ASD_WORKERS="2") as base:
        clip = real_recordings / "mimii-8ch" / "slider_abnormal.wav"
        first = score_when_ready(base, clip)
        second = score_when_ready(base, clip)
        assert first.status_code == second.status_code == 200, first.text
        body = first.json()
        assert body["model"] == DEFAULT_MODEL and body["decision"] in ("normal", "anomalous")
        assert body["clip"]["channels"] == 8
        assert second.json()["score"] == body["score"]  # either worker, same model, same answer
        assert first.headers["x-request-id"]
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
        burst = asyncio.run(_burst_of_connections(base, 32))

        # Multiprocess metrics: whichever worker answers shows both requests.
        for _ in range(3):
            text = httpx.get(f"{base}/metrics", timeout=5, headers={"Connection": "close"}).text
            decided = sum(
                s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "asd_decisions_total" and s.labels.get("model") == DEFAULT_MODEL
            )
            assert decided == 2
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    requests = [
        line for line in lines if line.get("message") == "request" and line.get("path") == "/v1/score"
    ]
    assert len(requests) >= 2
    assert all(
        {"time", "level", "logger", "request_id", "status", "duration_ms", "model", "decision"} <= set(r)
        for r in requests
        if r["status"] == 200
    )
    assert any(line.get("message") == "models loaded" for line in lines)
    # A burst of new connections is spread over both workers (a socket each, service.sockets),
    # not all accepted by whichever worker woke first.
    served_by = {line["request_id"]: line["pid"] for line in lines if line.get("request_id") in burst}
    assert len(served_by) == 32 and len(set(served_by.values())) == 2, served_by


async def _burst_of_connections(base: str, n: int) -> set[str]:
    """`n` requests at once, each on a connection of its own; their request ids."""
    ids = [f"burst-{i}" for i in range(n)]
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        answers = await asyncio.gather(*(client.get("/health", headers={"X-Request-ID": i}) for i in ids))
    assert [a.status_code for a in answers] == [200] * n
    return set(ids)

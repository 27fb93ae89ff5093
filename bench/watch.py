"""How fast does `asd-watch` feed clips, and does a service restart mid-run lose or repeat any?

Two runs over the same N 10-s clips (16 kHz, PCM16):

* `stub`: a stand-in service that answers every upload at once with a fixed decision, so the
  figure is the watcher's own capacity (reading, multipart upload, results journal, moves);
* `asd-serve`: the real service (ASD_WORKERS workers), stopped after a third of the clips and
  started again; the figure is end to end, restart included, and bounded by scoring.

Each run then checks that the results file holds every clip exactly once.

    python -m bench.watch --clips 1000 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from bench.machine import describe
from watcher.cli import Watcher
from watcher.client import ServiceClient
from watcher.folder import Folder, Journal

REPO = Path(__file__).resolve().parents[1]
TARGET_PER_S = 50.0


def make_clips(folder: Path, n: int, *, seconds: float = 10.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    sf.write(
        buffer,
        (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32),
        16000,
        subtype="PCM_16",
        format="WAV",
    )
    data = buffer.getvalue()
    for i in range(n):
        (folder / f"normal_id_00_{i:08d}.wav").write_bytes(data)


class _Stub(BaseHTTPRequestHandler):
    answer = json.dumps({"model": "stub", "decision": "normal", "score": 0.1, "threshold": 1.0}).encode()

    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args: object) -> None:
        pass


def serve_stub(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Stub)
    server.daemon_threads = True
    server.serve_forever()


@contextmanager
def stub_service() -> Iterator[str]:
    # A process of its own, so that the watcher measured does not share its interpreter lock.
    port = _free_port()
    stub = subprocess.Popen([sys.executable, "-m", "bench.watch", "--serve-stub", str(port)])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("the stub service did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        stub.terminate()
        stub.wait(timeout=10)


@contextmanager
def asd_serve(port: int, workers: int, log: Path) -> Iterator[str]:
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "ASD_WORKERS": str(workers)}
    env.setdefault("ASD_MODELS_DIR", str(REPO / "models"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "service.main"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"asd-serve did not get ready; see {log}")
                time.sleep(0.2)
            yield base
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def _watcher(folder: Path, base: str, concurrency: int) -> Watcher:
    return Watcher(
        Folder(folder, settle_s=0.0),
        Journal(folder / "results.jsonl"),
        ServiceClient(base, connections=concurrency),
        concurrency=concurrency,
        poll_s=0.02,
        progress_s=None,
        once=True,
        out=io.StringIO(),
    )


def check_exactly_once(folder: Path, n: int) -> str:
    lines = [json.loads(x) for x in (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    keys = {r["key"] for r in lines}
    done = len(list((folder / "done").glob("*.wav")))
    ok = len(lines) == n and len(keys) == n and done == n and all(r["outcome"] == "scored" for r in lines)
    return (
        f"{len(lines)} results, {len(keys)} distinct, {done} in done/: {'exactly once' if ok else 'MISMATCH'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watch", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="asd-serve worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="asd-watch requests in flight")
    parser.add_argument("--serve-stub", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stub is not None:
        serve_stub(args.serve_stub)
        return 0
    if args.clips < 3:
        parser.error("--clips must be at least 3")
    machine = describe()
    print(f"machine: {machine.cpu}, {machine.usable_cores} cores, load {machine.load_average}")
    work = Path(tempfile.mkdtemp(prefix="asd-watch-bench-"))
    try:
        folder = work / "stub"
        make_clips(folder, args.clips)
        with stub_service() as base:
            began = time.perf_counter()
            _watcher(folder, base, args.concurrency).run()
            stub_s = time.perf_counter() - began
        stub_rate = args.clips / stub_s
        print(
            f"stub service: {args.clips} clips in {stub_s:.1f} s = {stub_rate:.0f} clips/s "
            f"(target {TARGET_PER_S:g}: {'met' if stub_rate >= TARGET_PER_S else 'MISSED'}); "
            f"{check_exactly_once(folder, args.clips)}"
        )

        folder = work / "real"
        make_clips(folder, args.clips)
        port = _free_port()
        watcher = _watcher(folder, f"http://127.0.0.1:{port}", args.concurrency)
        runner = threading.Thread(target=watcher.run)
        with asd_serve(port, args.workers, work / "asd.log"):
            began = time.perf_counter()
            runner.start()
            while watcher.tally.scored < args.clips // 3 and runner.is_alive():
                time.sleep(0.05)
        down = time.perf_counter()
        with asd_serve(port, args.workers, work / "asd.log"):
            restarted = time.perf_counter()
            runner.join()
        real_s = time.perf_counter() - began
        scoring_s = real_s - (restarted - down)
        print(
            f"asd-serve ({args.workers} workers), restarted after {args.clips // 3} clips: {args.clips} clips in "
            f"{real_s:.1f} s ({restarted - down:.1f} s of it restarting) = {args.clips / real_s:.1f} clips/s, "
            f"{args.clips / scoring_s:.1f} clips/s while up; {check_exactly_once(folder, args.clips)}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())

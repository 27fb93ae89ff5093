"""Faults around the service: model files changed under it, an unreadable models folder,
a worker killed under load, a log stream that cannot be written (disk full)."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import registry as registry_module
from service.logs import JsonFormatter, SafeStreamHandler, log_failures
from tests.reliability.server import Server, drop_file_permission_override
from tests.service.conftest import DEFAULT_MODEL, REPO, assert_error, make_settings, serve
from tests.service.sounds import encode, noise

CLIP = encode(noise(2.0))


def score(client) -> httpx.Response:
    return client.post("/v1/score", files={"file": ("a.wav", CLIP)})


def model_info(client, name: str = DEFAULT_MODEL) -> dict:
    return {m["name"]: m for m in client.get("/v1/models").json()["models"]}[name]


def gauge(client, status: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "asd_models" and sample.labels.get("status") == status:
                return sample.value
    return 0.0


# --- a model file deleted or corrupted while serving ------------------------------------------


def test_model_files_changed_while_serving_are_reported_and_the_loaded_copy_serves(writable_models):
    folder = writable_models / DEFAULT_MODEL
    onnx, threshold = folder / "model.onnx", folder / "threshold.json"
    original_onnx, original_threshold = onnx.read_bytes(), threshold.read_bytes()
    with serve(make_settings(writable_models)) as client:
        client.app.state.registry.check_interval_s = 0  # look on every request
        assert score(client).status_code == 200
        assert model_info(client)["status"] == "ready"
        models = len(client.app.state.registry.ready_names())  # slider and whatever else is exported
        assert gauge(client, "ready") == models and gauge(client, "stale") == 0

        # Deleted: still serves from memory, and every view says so.
        onnx.unlink()
        info = model_info(client)
        assert info["status"] == "stale" and "model.onnx was deleted" in info["error"], info
        assert "a restart would load" in info["error"]
        assert str(writable_models) not in info["error"]  # no server paths in answers
        ready = client.get("/ready")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["models_stale"] == [DEFAULT_MODEL] and DEFAULT_MODEL not in body["models_ready"]
        assert body["default_model_ready"] is True
        scored = score(client)
        assert scored.status_code == 200, scored.text
        assert client.get(f"/v1/models/{DEFAULT_MODEL}").json()["status"] == "stale"
        assert gauge(client, "stale") == 1 and gauge(client, "ready") == models - 1

        # The same bytes back (a restore from backup): ready again.
        onnx.write_bytes(original_onnx)
        assert model_info(client)["status"] == "ready"
        assert client.get("/ready").json()["models_stale"] == []
        assert gauge(client, "stale") == 0 and gauge(client, "ready") == models

        # Corrupted in place: the hash says so.
        with open(onnx, "r+b") as handle:
            handle.seek(100)
            handle.write(b"\xff\xfe\xfd")
        info = model_info(client)
        assert info["status"] == "stale" and "model.onnx changed (sha256" in info["error"], info
        assert score(client).json()["score"] == scored.json()["score"]  # same loaded model, same answer

        # threshold.json edited too: both named.
        onnx.write_bytes(original_onnx)
        threshold.write_bytes(original_threshold.replace(b'"value"', b'"value" ', 1))
        info = model_info(client)
        assert info["status"] == "stale" and "threshold.json changed" in info["error"], info
        onnx.unlink()
        info = model_info(client)
        assert "threshold.json changed" in info["error"] and "model.onnx was deleted" in info["error"], info

    # What "a restart would load" means: a fresh app on this folder refuses the model.
    with serve(make_settings(writable_models)) as client:
        assert model_info(client)["status"] == "broken"
        assert_error(score(client), 503, "model_broken")


def test_touching_a_file_without_changing_it_keeps_the_model_ready(writable_models, monkeypatch):
    onnx = writable_models / DEFAULT_MODEL / "model.onnx"
    with serve(make_settings(writable_models)) as client:
        registry = client.app.state.registry
        registry.check_interval_s = 0
        hashed = []
        real_digest = registry_module.sha256_of
        monkeypatch.setattr(
            registry_module, "sha256_of", lambda path: hashed.append(path) or real_digest(path)
        )
        for _ in range(5):
            assert client.get("/ready").status_code == 200
        assert hashed == []  # unchanged stat: no file is read again
        os.utime(onnx, ns=(time.time_ns(), time.time_ns()))
        assert model_info(client)["status"] == "ready"
        assert hashed == [registry.models[DEFAULT_MODEL].files.paths[0], onnx]  # re-hashed once, equal


def test_checks_are_bounded_by_the_interval(writable_models):
    with serve(make_settings(writable_models)) as client:
        registry = client.app.state.registry
        registry.check_interval_s = 3600
        registry.check_files(force=True)  # starts the interval now
        (writable_models / DEFAULT_MODEL / "model.onnx").unlink()
        assert model_info(client)["status"] == "ready"  # not looked at within the interval
        registry.check_interval_s = 0
        assert model_info(client)["status"] == "stale"


# --- the models folder unreadable at start --------------------------------------------------


def _needs_permission_control() -> list[str]:
    prefix = drop_file_permission_override()
    if prefix == ["<no setpriv>"]:
        pytest.skip("running as root without setpriv: root reads any folder")
    return prefix


def test_unreadable_models_folder_at_start(models_dir, tmp_path):
    prefix = _needs_permission_control()
    locked = tmp_path / "models"
    locked.mkdir()
    (locked / "slider").mkdir()
    locked.chmod(0)
    try:
        with Server(locked, tmp_path / "server.log", workers=1, prefix=prefix) as server:
            health = server.wait_answering("/health")
            assert health.status_code == 200
            deadline = time.monotonic() + 60
            while (ready := httpx.get(f"{server.base}/ready", timeout=10)).json()["error"][
                "code"
            ] == "not_ready":
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.2)
            error = assert_error(ready, 503, "no_model_ready")
            assert "the models folder cannot be read (Permission denied)" in error["message"], error
            assert str(locked) not in error["message"]  # the path is for the log, not for clients
            assert httpx.get(f"{server.base}/health", timeout=10).status_code == 200
            logged = [
                line
                for line in server.log_lines()
                if line.get("message") == "models folder unusable: no model will serve"
            ]
            assert logged and logged[0]["level"] == "ERROR" and logged[0]["models_dir"] == str(locked)
            assert "Permission denied" in logged[0]["reason"]
    finally:
        locked.chmod(0o755)


def test_one_unreadable_model_folder_does_not_stop_the_others(models_dir, tmp_path):
    prefix = _needs_permission_control()
    folder = tmp_path / "models"
    shutil.copytree(models_dir / DEFAULT_MODEL, folder / DEFAULT_MODEL)
    shutil.copytree(models_dir / DEFAULT_MODEL, folder / "locked")
    (folder / "locked").chmod(0)
    script = (
        "import json, sys\n"
        "from service.registry import Registry\n"
        "r = Registry(sys.argv[1]); r.load()\n"
        "broken = {n: r.models[n].error for n in r.broken_names()}\n"
        "print(json.dumps({'ready': r.ready_names(), 'broken': broken,"
        " 'problem': r.problem}))\n"
    )
    try:
        result = subprocess.run(
            [*prefix, sys.executable, "-c", script, str(folder)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        (folder / "locked").chmod(0o755)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    assert state["ready"] == [DEFAULT_MODEL]
    assert "Permission denied" in state["broken"]["locked"] and state["problem"] is None


# --- a worker killed under load -------------------------------------------------------------


async def _load(base: str, prefix: str, count: int, concurrency: int, results: dict) -> None:
    index = 0

    async def worker() -> None:
        nonlocal index
        # A new connection per request: a request in flight is on one known worker.
        async with httpx.AsyncClient(
            base_url=base, timeout=120, limits=httpx.Limits(max_keepalive_connections=0)
        ) as c:
            while index < count:
                request_id = f"{prefix}-{index}"
                index += 1
                started = time.monotonic()
                try:
                    answer = await c.post(
                        "/v1/score", files={"file": ("a.wav", CLIP)}, headers={"X-Request-ID": request_id}
                    )
                    code = answer.json().get("error", {}).get("code") if answer.status_code != 200 else None
                    results[request_id] = (answer.status_code, started, time.monotonic(), code)
                except httpx.TransportError as error:
                    results[request_id] = (type(error).__name__, started, time.monotonic(), None)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def test_worker_killed_under_load(models_dir, tmp_path):
    with Server(models_dir, tmp_path / "server.log", workers=2) as server:
        server.wait_ready(timeout=180)
        victim, survivor = server.worker_pids()
        results: dict[str, tuple] = {}
        loader = threading.Thread(target=asyncio.run, args=(_load(server.base, "k", 300, 8, results),))
        loader.start()
        while len(results) < 60 and loader.is_alive():
            time.sleep(0.05)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)  # a worker this test's server started
        loader.join(300)
        assert not loader.is_alive()

        # uvicorn's master starts a new worker; once it has loaded, both answer again.
        deadline = time.monotonic() + 120
        while len(pids := server.worker_pids()) != 2 or victim in pids:
            assert time.monotonic() < deadline, f"no replacement worker: {pids}\n{server.log_tail()}"
            time.sleep(0.2)
        server.wait_ready(timeout=120)
        after: dict[str, tuple] = {}
        asyncio.run(_load(server.base, "after", 40, 4, after))
        time.sleep(0.5)
        logged = {line["request_id"]: line for line in server.log_lines() if line.get("message") == "request"}

    assert len(results) == 300
    new_worker = next(p for p in pids if p != survivor)
    # The replacement worker takes connections while it loads the models, and answers those
    # 503 not_ready with Retry-After (as any worker does while loading): nothing else is 5xx.
    loading = {rid: r for rid, r in results.items() if r[0] == 503}
    assert all(r[3] == "not_ready" and logged[rid]["pid"] == new_worker for rid, r in loading.items()), (
        loading
    )
    assert not [r for r in results.values() if isinstance(r[0], int) and r[0] >= 500 and r[0] != 503]
    # Only requests in flight on the killed worker failed: at most one per client, all at the kill.
    failed = {rid: r for rid, r in results.items() if isinstance(r[0], str)}
    assert len(failed) <= 8, failed
    assert all(r[1] <= killed_at + 1 for r in failed.values()), failed
    assert all(r[0] in (200, 503) for r in results.values() if not isinstance(r[0], str))
    # Every request the surviving worker handled, in flight during the kill or not, succeeded.
    survivors = [rid for rid, line in logged.items() if line.get("pid") == survivor and rid.startswith("k-")]
    assert survivors and all(results[rid][0] == 200 for rid in survivors)
    assert not [rid for rid in failed if logged.get(rid, {}).get("pid") == survivor]
    # After the restart: all well, and the new worker took part.
    assert [r[0] for r in after.values()] == [200] * 40, after
    assert any(logged[rid].get("pid") == new_worker for rid in after if rid in logged)
    print(
        f"\nworker kill: {len(failed)} of 300 requests in flight on the killed worker failed (no answer); "
        f"{len(survivors)} served by the survivor, all 200; {len(loading)} answered 503 not_ready by the "
        "replacement while it loaded; 40/40 after the restart"
    )


# --- logs that cannot be written (disk full) ------------------------------------------------


class FullDisk(io.TextIOBase):
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_for_logs_never_fails_a_request(serve_with, capfd):
    log_failures.reset()
    started = time.monotonic()
    handler = SafeStreamHandler(FullDisk())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with serve_with() as client:
            for _ in range(5):
                assert score(client).status_code == 200
            ready = client.get("/ready")
            assert ready.status_code == 200
            assert ready.json()["log_errors"] >= 5  # one request line each at least
    finally:
        root.removeHandler(handler)
    err = capfd.readouterr().err
    notices = [line for line in err.splitlines() if "log records cannot be written" in line]
    # One line (a minute apart at most), not a traceback per record.
    assert 1 <= len(notices) <= 1 + (time.monotonic() - started) / 60, err[-3000:]
    notice = json.loads(notices[0])
    assert "No space left on device" in notice["error"] and notice["failed_records"] == 1
    assert "Traceback" not in err and "--- Logging error ---" not in err


def test_asd_serve_with_stdout_on_a_full_device(models_dir, tmp_path):
    """The real thing: stdout is /dev/full (every write fails with ENOSPC)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    started = time.monotonic()
    with open("/dev/full", "wb") as full:
        server = Server(
            models_dir, tmp_path / "unused.log", workers=1, stdout=full, stderr_path=tmp_path / "stderr.log"
        )
        with server:
            server.wait_ready(timeout=180)
            answers = [
                httpx.post(f"{server.base}/v1/score", files={"file": ("a.wav", CLIP)}, timeout=60).status_code
                for _ in range(10)
            ]
            ready = httpx.get(f"{server.base}/ready", timeout=10)
    assert answers == [200] * 10
    assert ready.status_code == 200 and ready.json()["log_errors"] >= 10, ready.text
    err = (tmp_path / "stderr.log").read_text(encoding="utf-8", errors="replace")
    notices = [line for line in err.splitlines() if "log records cannot be written" in line]
    assert 1 <= len(notices) <= 1 + (time.monotonic() - started) / 60, err[-3000:]
    assert "No space left on device" in notices[0]
    assert "--- Logging error ---" not in err

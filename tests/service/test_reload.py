"""POST /v1/models/reload: models added, replaced, removed and refused while the service serves."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.bundle import THRESHOLD_FILE
from tests.service.conftest import DEFAULT_MODEL, assert_error, make_settings, serve
from tests.service.live import asd_serve
from tests.service.sounds import encode, noise

CLIP = encode(noise(2.0))


@pytest.fixture
def models(models_dir: Path, tmp_path: Path) -> Path:
    """A models folder of this test's own: the default model and a copy named `extra`."""
    root = tmp_path / "models"
    root.mkdir()
    shutil.copytree(models_dir / DEFAULT_MODEL, root / DEFAULT_MODEL)
    shutil.copytree(models_dir / DEFAULT_MODEL, root / "extra")
    return root


def set_threshold(folder: Path, value: float) -> None:
    path = folder / THRESHOLD_FILE
    document = json.loads(path.read_text(encoding="utf-8"))
    document["threshold"]["value"] = value
    path.write_text(json.dumps(document), encoding="utf-8")


def score(client, name: str):
    return client.post(f"/v1/models/{name}/score", files={"file": ("a.wav", CLIP)})


def test_reload_adds_replaces_and_removes(models: Path, tmp_path: Path) -> None:
    with serve(make_settings(models)) as client:
        nothing = client.post("/v1/models/reload").json()
        assert nothing["unchanged"] == sorted([DEFAULT_MODEL, "extra"]) and not nothing["added"]
        assert nothing["other_workers"] is False

        shutil.copytree(models / "extra", models / "added")
        set_threshold(models / "extra", 123.0)
        shutil.rmtree(models / DEFAULT_MODEL)
        report = client.post("/v1/models/reload").json()
        assert report["added"] == ["added"] and report["replaced"] == ["extra"]
        assert report["removed"] == [DEFAULT_MODEL] and report["broken"] == []

        assert score(client, "added").status_code == 200
        assert score(client, "extra").json()["threshold"] == 123.0
        assert_error(score(client, DEFAULT_MODEL), 404)
        metrics = client.get("/metrics").text
        assert 'asd_model_threshold{model="extra"} 123.0' in metrics
        assert f'asd_model_threshold{{model="{DEFAULT_MODEL}"}}' not in metrics


def test_a_new_version_that_does_not_load_leaves_the_old_one_serving(models: Path) -> None:
    with serve(make_settings(models)) as client:
        before = score(client, "extra").json()["threshold"]
        (models / "extra" / "model.onnx").write_bytes(b"half a model")
        report = client.post("/v1/models/reload").json()
        (failure,) = report["broken"]
        assert failure["name"] == "extra" and failure["serving"] is True and failure["error"]
        answer = score(client, "extra")
        assert answer.status_code == 200 and answer.json()["threshold"] == before
        info = client.get("/v1/models/extra").json()
        assert info["status"] == "stale" and "keeps serving" in info["error"]
        # A broken folder that never served is listed broken, and the others are untouched.
        (models / "new").mkdir()
        (models / "new" / THRESHOLD_FILE).write_text("{", encoding="utf-8")
        report = client.post("/v1/models/reload").json()
        assert {f["name"]: f["serving"] for f in report["broken"]} == {"extra": True, "new": False}
        assert score(client, DEFAULT_MODEL).status_code == 200


def test_one_reload_at_a_time(models: Path) -> None:
    with serve(make_settings(models)) as client:
        registry = client.app.state.registry
        with registry._reload_lock:
            assert_error(client.post("/v1/models/reload"), 409, "reload_in_progress")
        assert client.post("/v1/models/reload").status_code == 200


def test_reload_needs_the_api_key(models: Path) -> None:
    with serve(make_settings(models, api_key="s3cret-key-for-tests")) as client:
        assert_error(client.post("/v1/models/reload"), 401)
        assert (
            client.post("/v1/models/reload", headers={"X-API-Key": "s3cret-key-for-tests"}).status_code == 200
        )


def test_a_reload_under_load_fails_no_request(models: Path, tmp_path: Path) -> None:
    with asd_serve(models, tmp_path / "asd.log") as base:
        failures: list[str] = []
        thresholds: list[tuple[float, float]] = []  # (time, threshold) of each answer
        stop = threading.Event()

        def client_loop() -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                while not stop.is_set():
                    response = http.post("/v1/models/extra/score", files={"file": ("a.wav", CLIP)})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        thresholds.append((time.monotonic(), response.json()["threshold"]))

        clients = [threading.Thread(target=client_loop) for _ in range(4)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        set_threshold(models / "extra", 321.0)
        asked = time.monotonic()
        report = httpx.post(f"{base}/v1/models/reload", timeout=30).json()
        time.sleep(1.0)
        stop.set()
        for c in clients:
            c.join()
    assert report["replaced"] == ["extra"]
    assert failures == [], failures[:3]
    served_new = [t for t, value in thresholds if value == 321.0]
    assert served_new, "the new version never answered"
    delay = min(served_new) - asked
    assert delay <= 2.0
    print(
        f"\nreload under 4 concurrent clients: {len(thresholds)} requests, 0 failed, new version serving {delay:.2f} s after the call"
    )


def test_every_worker_reloads_and_the_interval_rescans(models: Path, tmp_path: Path) -> None:
    with asd_serve(models, tmp_path / "asd.log", ASD_WORKERS="2") as base:
        shutil.copytree(models / "extra", models / "third")
        assert httpx.post(f"{base}/v1/models/reload", timeout=30).json()["other_workers"] is True
        deadline = time.monotonic() + 10
        seen: list[bool] = []
        while time.monotonic() < deadline:
            # A new connection each time, so either worker may answer.
            names = {
                m["name"]
                for m in httpx.get(f"{base}/v1/models", headers={"Connection": "close"}).json()["models"]
            }
            seen.append("third" in names)
            if len(seen) >= 20 and all(seen[-20:]):
                break
            time.sleep(0.1)
        assert seen[-20:] == [True] * 20, "some worker still serves the old set"
    with asd_serve(models, tmp_path / "asd2.log", ASD_RELOAD_INTERVAL_S="0.5") as base:
        shutil.copytree(models / "extra", models / "fourth")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if "fourth" in {m["name"] for m in httpx.get(f"{base}/v1/models").json()["models"]}:
                break
            time.sleep(0.2)
        else:
            pytest.fail("ASD_RELOAD_INTERVAL_S did not pick up a new folder within 10 s")

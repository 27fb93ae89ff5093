"""Model loading: what /v1/models says, broken folders, readiness."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from service.bundle import Bundle
from service.registry import Registry
from tests.service.conftest import DEFAULT_MODEL, assert_error, make_settings, serve
from tests.service.sounds import encode, noise

CLIP = encode(noise(2.0))


def test_list_models_describes_each_model(client, models_dir, model_names):
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["default_model"] == DEFAULT_MODEL
    assert [m["name"] for m in body["models"]] == model_names
    for info in body["models"]:
        bundle = Bundle.read(models_dir / info["name"])
        assert info["status"] == "ready" and info["error"] is None
        assert info["default"] is (info["name"] == DEFAULT_MODEL)
        assert info["machine_type"] == bundle.machine_type
        assert info["machine_ids"] == bundle.machine_ids
        assert info["arch"] == bundle.model.arch
        assert info["threshold"] == json.loads(bundle.threshold.model_dump_json())
        assert {"value", "method", "quantile", "gamma", "empirical_false_alarm_rate"} <= set(
            info["threshold"]
        )
        assert info["features"]["n_mels"] == bundle.features.n_mels
        assert "mel_filters" not in info["features"]  # the packed bank stays out of the answer
        assert info["patching"]["frames"] == bundle.patching.frames
        assert info["patching"]["seconds"] > 0
        assert info["training"]["n_clips"] == bundle.training.n_clips
        assert info["training"]["trained_at"]
        assert info["model"]["sha256"] == bundle.model.sha256


def test_get_one_model(client):
    response = client.get(f"/v1/models/{DEFAULT_MODEL}")
    assert response.status_code == 200
    info = response.json()
    assert info["name"] == DEFAULT_MODEL and info["default"] is True
    detector = client.app.state.registry.get(DEFAULT_MODEL).detector
    assert info["threshold"]["value"] == detector.threshold
    assert info["min_duration_s"] == round(detector.min_samples / 16000, 6)


def _tamper(models: Path) -> None:
    """slider: model bytes changed; slider-copy: intact; more broken kinds beside them."""
    shutil.copytree(models / DEFAULT_MODEL, models / "slider-copy")
    with open(models / DEFAULT_MODEL / "model.onnx", "ab") as handle:
        handle.write(b"\x00")
    shutil.copytree(models / "slider-copy", models / "bad-json")
    (models / "bad-json" / "threshold.json").write_text("{ not json", encoding="utf-8")
    (models / "no-threshold").mkdir()
    shutil.copy(models / "slider-copy" / "model.onnx", models / "no-threshold" / "model.onnx")
    # Hash fine, but the patch width no longer matches the graph's input.
    shutil.copytree(models / "slider-copy", models / "wrong-shape")
    data = json.loads((models / "wrong-shape" / "threshold.json").read_text(encoding="utf-8"))
    data["patching"]["frames"] += 1
    (models / "wrong-shape" / "threshold.json").write_text(json.dumps(data), encoding="utf-8")
    # Not a model folder at all: ignored, not listed.
    (models / "reports").mkdir()
    (models / "reports" / "notes.txt").write_text("x", encoding="utf-8")
    # A name the API could never address: skipped.
    shutil.copytree(models / "slider-copy", models / "bad name!")


def test_broken_folders_are_listed_and_the_others_serve(writable_models, caplog):
    _tamper(writable_models)
    with serve(make_settings(writable_models)) as app_client:
        listing = {m["name"]: m for m in app_client.get("/v1/models").json()["models"]}
        assert "reports" not in listing and "bad name!" not in listing
        broken = {name: m["error"] for name, m in listing.items() if m["status"] == "broken"}
        assert set(broken) == {DEFAULT_MODEL, "bad-json", "no-threshold", "wrong-shape"}
        assert "sha256" in broken[DEFAULT_MODEL]
        assert "threshold.json" in broken["bad-json"] and "threshold.json" in broken["no-threshold"]
        assert "shape" in broken["wrong-shape"]
        assert all(str(writable_models) not in error for error in broken.values())  # no server paths
        # What threshold.json says is still shown for a model refused on its hash.
        assert listing[DEFAULT_MODEL]["machine_type"] and listing[DEFAULT_MODEL]["threshold"]

        one = app_client.get(f"/v1/models/{DEFAULT_MODEL}").json()
        assert one["status"] == "broken" and "sha256" in one["error"]
        error = assert_error(
            app_client.post("/v1/score", files={"file": ("a.wav", CLIP)}), 503, "model_broken"
        )
        assert "sha256" in error["message"]

        assert app_client.get("/ready").json()["default_model_ready"] is False
        good = app_client.post("/v1/models/slider-copy/score", files={"file": ("a.wav", CLIP)})
        assert good.status_code == 200, good.text
        assert_error(app_client.get("/v1/models/bad%20name!"), 404, "model_not_found")
    logged = {
        r.__dict__.get("model"): r
        for r in caplog.records
        if r.getMessage() == "model is broken and will not serve"
    }
    assert {DEFAULT_MODEL, "bad-json", "no-threshold", "wrong-shape"} <= set(logged)
    assert "sha256" in logged[DEFAULT_MODEL].__dict__["error"]


def test_ready_is_503_until_models_are_loaded(models_dir, monkeypatch):
    gate = threading.Event()
    real_load = Registry.load

    def gated_load(self: Registry) -> None:
        assert gate.wait(60)
        real_load(self)

    monkeypatch.setattr(Registry, "load", gated_load)
    with serve(make_settings(models_dir), wait=False) as app_client:
        try:
            assert app_client.get("/health").status_code == 200  # alive while loading
            assert_error(app_client.get("/ready"), 503, "not_ready")
            assert_error(app_client.post("/v1/score", files={"file": ("a.wav", CLIP)}), 503, "not_ready")
            assert_error(app_client.get("/v1/models"), 503, "not_ready")
        finally:
            gate.set()
        assert app_client.app.state.registry.wait(60)
        ready = app_client.get("/ready")
        assert ready.status_code == 200
        assert DEFAULT_MODEL in ready.json()["models_ready"]
        assert app_client.post("/v1/score", files={"file": ("a.wav", CLIP)}).status_code == 200


def test_no_usable_model_is_not_ready(tmp_path):
    with serve(make_settings(tmp_path / "does-not-exist")) as app_client:
        error = assert_error(app_client.get("/ready"), 503, "no_model_ready")
        assert "broken" in error["message"]
        assert app_client.get("/v1/models").json()["models"] == []
        assert_error(app_client.post("/v1/score", files={"file": ("a.wav", CLIP)}), 404, "model_not_found")


def test_sessions_are_loaded_once_and_shared(client):
    registry = client.app.state.registry
    detector = registry.get(DEFAULT_MODEL).detector
    session = detector.session
    for _ in range(3):
        assert client.post("/v1/score", files={"file": ("a.wav", CLIP)}).status_code == 200
    assert registry.get(DEFAULT_MODEL).detector is detector and detector.session is session
    options = session.get_session_options()
    assert options.intra_op_num_threads == client.app.state.settings.intra_op_threads

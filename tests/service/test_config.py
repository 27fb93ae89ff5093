"""Settings from the environment, and what run() hands to uvicorn."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import service.main
from service.config import DEFAULT_MODELS_DIR, Settings, available_cores

REPO = Path(__file__).resolve().parents[2]


def test_defaults():
    settings = Settings()
    assert settings.models_dir == DEFAULT_MODELS_DIR == REPO / "models"
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.default_model == "slider"
    assert settings.max_upload_size == 50 * 1024 * 1024
    assert settings.max_duration_s == 300
    assert settings.api_key is None
    # workers x onnxruntime threads = the cores, by default.
    assert settings.intra_op_threads == available_cores()


def test_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ASD_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("ASD_DEFAULT_MODEL", "slider-dense")
    monkeypatch.setenv("ASD_MAX_UPLOAD_SIZE", "2MiB")
    monkeypatch.setenv("ASD_MAX_DURATION_S", "60")
    monkeypatch.setenv("ASD_API_KEY", "secret")
    monkeypatch.setenv("ASD_LOG_LEVEL", "debug")
    monkeypatch.setenv("ASD_WORKERS", "2")
    monkeypatch.setenv("ASD_ORT_THREADS", "3")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9001")
    settings = Settings()
    assert settings.models_dir == tmp_path and settings.default_model == "slider-dense"
    assert settings.max_upload_size == 2 * 1024 * 1024 and settings.max_duration_s == 60
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "secret"
    assert settings.log_level == "DEBUG" and settings.workers == 2 and settings.intra_op_threads == 3
    assert (settings.host, settings.port) == ("0.0.0.0", 9001)
    monkeypatch.setenv("ASD_PORT", "9002")  # the prefixed name wins
    assert Settings().port == 9002


def test_threads_split_the_cores_between_workers(monkeypatch):
    monkeypatch.setattr("service.config.available_cores", lambda: 8)
    assert Settings(workers=4).intra_op_threads == 2
    assert Settings(workers=16).intra_op_threads == 1
    assert Settings(workers=2, ort_threads=1).intra_op_threads == 1
    assert Settings(workers=2).scoring_concurrency == 4


def test_empty_api_key_means_none(monkeypatch):
    monkeypatch.setenv("ASD_API_KEY", "")
    assert Settings().api_key is None


def _record_serving(monkeypatch) -> list:
    """What run() hands to uvicorn.run or to service.sockets.serve (the same arguments), by which."""
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: calls.append(("uvicorn.run", args, kwargs)))
    monkeypatch.setattr("service.sockets.serve", lambda *a, **kw: calls.append(("sockets.serve", a, kw)))
    # Empty counts as unset for run(); setenv makes monkeypatch remove what run() sets.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.setenv("ASD_RELOAD_SIGNAL", "")
    return calls


def test_run_starts_uvicorn_with_the_settings(monkeypatch):
    calls = _record_serving(monkeypatch)
    monkeypatch.setenv("HOST", "127.0.0.2")
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("ASD_WORKERS", "3")
    service.main.run()
    ((how, args, kwargs),) = calls
    # Several workers on Linux: a listening socket each (service.sockets), else uvicorn's shared one.
    assert how == ("sockets.serve" if sys.platform == "linux" else "uvicorn.run")
    assert args == ("service.main:create_app",) and kwargs["factory"] is True
    assert (kwargs["host"], kwargs["port"], kwargs["workers"]) == ("127.0.0.2", 8123, 3)
    assert kwargs["access_log"] is False and kwargs["log_config"]["root"]["level"] == "INFO"
    # Several workers share their metrics through a fresh folder.
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert Path(folder).is_dir() and not any(Path(folder).iterdir())
    # ... and one file that tells them all to reload (service.reload).
    assert Path(os.environ["ASD_RELOAD_SIGNAL"]).parent.is_dir()


@pytest.mark.parametrize(
    ("workers", "reuse_port", "how"),
    [("1", "true", "uvicorn.run"), ("2", "false", "uvicorn.run"), ("2", "true", "sockets.serve")],
)
def test_one_worker_or_asd_reuse_port_false_is_uvicorns_own_socket(monkeypatch, workers, reuse_port, how):
    calls = _record_serving(monkeypatch)
    monkeypatch.setattr("service.sockets.supported", lambda: True)
    monkeypatch.setenv("ASD_WORKERS", workers)
    monkeypatch.setenv("ASD_REUSE_PORT", reuse_port)
    service.main.run()
    ((called, _, kwargs),) = calls
    assert called == how and kwargs["workers"] == int(workers)


def test_run_refuses_a_bad_configuration(monkeypatch):
    monkeypatch.setenv("ASD_PORT", "not-a-port")
    with pytest.raises(SystemExit, match="invalid configuration"):
        service.main.run()

"""Fixtures for the service tests: the real exported models (copied), apps and clients.

The models are the repo's `models/` folders (override with ASD_TEST_MODELS_DIR),
copied once per session so that a model being re-exported while the tests run
cannot change under them; tests that tamper get their own copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.bundle import THRESHOLD_FILE
from service.config import Settings
from service.main import create_app

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "slider"

# Variables that would change the settings under test if the developer has them set.
_SETTINGS_ENV = ("HOST", "PORT", "PROMETHEUS_MULTIPROC_DIR")


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name in _SETTINGS_ENV or (
                name.startswith("ASD_") and name not in ("ASD_REAL_RECORDINGS", "ASD_TEST_MODELS_DIR")
            ):
                patch.delenv(name)
        yield


def source_models_dir() -> Path:
    override = os.environ.get("ASD_TEST_MODELS_DIR")
    return Path(override) if override else REPO / "models"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session copy of every exported detector folder (read-only use)."""
    source = source_models_dir()
    if not (source / DEFAULT_MODEL / THRESHOLD_FILE).is_file():
        pytest.fail(
            f"no exported model at {source / DEFAULT_MODEL}: export one first (or set ASD_TEST_MODELS_DIR)"
        )
    target = tmp_path_factory.mktemp("models")
    for folder in sorted(source.iterdir()):
        if (folder / THRESHOLD_FILE).is_file():
            shutil.copytree(folder, target / folder.name)
    return target


@pytest.fixture(scope="session")
def model_names(models_dir: Path) -> list[str]:
    return sorted(folder.name for folder in models_dir.iterdir())


@pytest.fixture
def writable_models(models_dir: Path, tmp_path: Path) -> Path:
    """A copy of the models that this test may break."""
    target = tmp_path / "models"
    shutil.copytree(models_dir, target)
    return target


def make_settings(models_dir: Path, **overrides: Any) -> Settings:
    return Settings(models_dir=models_dir, **overrides)


@contextmanager
def serve(settings: Settings, *, wait: bool = True) -> Iterator[TestClient]:
    """A TestClient with the lifespan running, by default after the models finished loading."""
    app = create_app(settings)
    with TestClient(app) as client:
        if wait:
            assert app.state.registry.wait(120), "models did not load within 120 s"
        yield client


@pytest.fixture(scope="session")
def client(models_dir: Path) -> Iterator[TestClient]:
    """The app on the real models with default settings, shared by read-only tests."""
    with serve(make_settings(models_dir)) as test_client:
        yield test_client


@pytest.fixture
def serve_with(models_dir: Path) -> Callable[..., Any]:
    """`with serve_with(max_upload_size=...) as client:` on the session models."""

    def factory(**overrides: Any) -> Any:
        return serve(make_settings(overrides.pop("models_dir", models_dir), **overrides))

    return factory


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the service's error shape with this status (and code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    if code is not None:
        assert error["code"] == code, error
    return error

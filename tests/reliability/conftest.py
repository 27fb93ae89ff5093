"""Fixtures of the reliability tests: the service tests' model copies and apps, and one live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import soak
from tests.reliability.server import Server

# Imported so that pytest registers them here too (they live in tests/service/conftest.py).
from tests.service.conftest import (  # noqa: F401
    _clean_environment,
    model_names,
    models_dir,
    serve_with,
    writable_models,
)

LIVE_KEY = soak.KEY


@pytest.fixture(scope="session")
def live_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    """`asd-serve` with 2 workers, an API key (LIVE_KEY), a 1 MiB limit and DEBUG logs, on 127.0.0.1.

    Shared by the load, API fuzz and secrets tests (starting one costs 10-30 s here);
    none of them changes its state. Its whole output is in `live_server.log_text()`.
    """
    workdir = tmp_path_factory.mktemp("live")
    with soak.start_server(models_dir, workdir, workers=2, log_level="DEBUG") as server:
        server.wait_ready(timeout=180)
        yield server

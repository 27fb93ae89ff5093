"""Fixtures shared by the training and service tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def real_recordings_dir() -> Path:
    """The real MIMII/DCASE clips in `../shared/data/real-recordings` (CI puts shared/ beside the clone)."""
    override = os.environ.get("ASD_REAL_RECORDINGS")
    return Path(override) if override else REPO.parent / "shared" / "data" / "real-recordings"


@pytest.fixture(scope="session")
def real_recordings() -> Path:
    path = real_recordings_dir()
    if not path.is_dir():
        pytest.fail(f"real recordings not found at {path}; set ASD_REAL_RECORDINGS")
    return path

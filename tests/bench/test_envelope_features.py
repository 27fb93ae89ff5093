"""bench.envelope_features: a level change is found by the mean-level feature, bad folders are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.envelope_features import CACHE, main


def _write(folder: Path, name: str, samples: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / name, samples, 16000, subtype="FLOAT")


def test_a_louder_fault_is_found_by_the_mean_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "toy"
    for i in range(8):
        _write(root / "fan" / "train", f"normal_id_00_{i:08d}.wav", 0.05 * rng.standard_normal(16000))
    for i in range(4):
        _write(root / "fan" / "test", f"normal_id_00_{i:08d}.wav", 0.05 * rng.standard_normal(16000))
        _write(root / "fan" / "test", f"anomaly_id_00_{i:08d}.wav", 0.1 * rng.standard_normal(16000))
    assert main([str(root), "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "toy mean 1.000" in out
    assert (root / CACHE).is_file()
    assert main([str(root)]) == 0  # from the cache, the same numbers
    assert "toy mean 1.000" in capsys.readouterr().out


def test_a_folder_without_clips_is_reported_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty" / "fan" / "train").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    assert "has no train and test clips" in capsys.readouterr().err

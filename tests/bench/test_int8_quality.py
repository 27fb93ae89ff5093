"""bench.int8_quality: which cells it finds, how it judges the drop, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.int8_quality import MAX_AUC_DROP, Row, find_cells, main, render


def _cell(work: Path, data_set: str, name: str, *, complete: bool = True) -> Path:
    folder = work / "fits" / "size" / data_set / name
    folder.mkdir(parents=True)
    if complete:
        (folder / "threshold.json").write_text("{}")
    return folder


def test_find_cells_takes_fitted_folders_of_the_named_detectors(tmp_path: Path) -> None:
    cae = _cell(tmp_path, "fan_seed0_snrdefault", "cae_fit0")
    _cell(tmp_path, "fan_seed0_snrdefault", "dense_fit0")
    _cell(tmp_path, "pump_seed1_snrdefault", "cae_fit1", complete=False)  # a fit that did not finish
    cells = find_cells(tmp_path, ["cae"])
    assert cells == [
        (cae, tmp_path / "data" / "size" / "fan_seed0_snrdefault", "fan_seed0_snrdefault", "cae")
    ]


def test_render_judges_each_data_set_by_its_mean_drop() -> None:
    within = Row("slider", "cae", fp32={"00": 0.90, "02": 0.80}, int8={"00": 0.899, "02": 0.797})
    within.fp32_pauc, within.int8_pauc = dict(within.fp32), dict(within.int8)
    beyond = Row("fan", "cae", fp32={"00": 0.90}, int8={"00": 0.90 - 2 * MAX_AUC_DROP})
    beyond.fp32_pauc, beyond.int8_pauc = dict(beyond.fp32), dict(beyond.int8)
    failed = Row("valve", "cae", failed="QuantizationError: parity")
    assert within.drop == pytest.approx(0.002)
    assert within.worst_id_drop == pytest.approx(0.003)
    text = render([within, beyond, failed], cpu="test CPU")
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert lines["| slider"].endswith("| yes |")
    assert lines["| fan"].endswith("| **no** |")
    assert "FAILED: QuantizationError: parity" in lines["| valve"]
    assert "within 0.005 on 1 of 2" in text


def test_main_refuses_a_folder_without_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "has no fits/ folder" in capsys.readouterr().err
    (tmp_path / "fits").mkdir()
    assert main([str(tmp_path)]) == 2
    assert "no fitted cae folders" in capsys.readouterr().err

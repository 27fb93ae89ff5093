from __future__ import annotations

from pathlib import Path

import pytest

from training.cli import main

from .conftest import write_tone


def _fails_cleanly(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # Progress bars may precede it on stderr; the error is one line, the last.
    errors = [line for line in err.strip().splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.strip().endswith(errors[0])
    assert errors[0].startswith(f"asd-train {argv[0]}: error: ") and message in errors[0]


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["fit", str(tmp_path / "nope"), "--out", str(tmp_path / "m")], "does not exist")
    assert not (tmp_path / "m").exists()


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "slider" / "train").mkdir(parents=True)
    _fails_cleanly(capsys, ["fit", str(tmp_path), "--out", str(tmp_path / "m")], "no WAV files")


def test_folder_of_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(3):
        (tmp_path / f"normal_id_00_{i:08d}.wav").write_bytes(b"not audio" * 20)
    _fails_cleanly(capsys, ["fit", str(tmp_path), "--out", str(tmp_path / "m")], "none of the 3 WAV files")


def test_too_few_clips_for_a_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(9):
        write_tone(tmp_path / f"normal_id_00_{i:08d}.wav", seconds=1.5)
    _fails_cleanly(
        capsys, ["fit", str(tmp_path), "--out", str(tmp_path / "m"), "--frames", "16"], "at least 10"
    )
    for i in range(9, 12):
        write_tone(tmp_path / f"normal_id_00_{i:08d}.wav", seconds=1.5)
    # A holdout of 12 clips leaves one clip to calibrate on; the message names the way out.
    holdout = [
        "fit",
        str(tmp_path),
        "--out",
        str(tmp_path / "m"),
        "--frames",
        "16",
        "--calibration",
        "holdout",
    ]
    _fails_cleanly(capsys, holdout, "--calibration cross-fit")


def test_unknown_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tone(tmp_path / "normal_id_00_00000000.wav", seconds=1.0)
    _fails_cleanly(capsys, ["fit", str(tmp_path), "--out", str(tmp_path / "m"), "--ids", "00,04"], "04")


def test_frames_not_divisible_by_pooling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(40):
        write_tone(tmp_path / f"normal_id_00_{i:08d}.wav", seconds=1.5)
    _fails_cleanly(
        capsys, ["fit", str(tmp_path), "--out", str(tmp_path / "m"), "--frames", "12"], "divisible"
    )
    out = ["fit", str(tmp_path), "--out", str(tmp_path / "m")]
    _fails_cleanly(capsys, [*out, "--code-frames", "0"], "must be positive")
    _fails_cleanly(capsys, [*out, "--bottleneck", "0"], "must be positive")


def test_diverging_training_is_an_error_and_writes_no_model(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    argv = ["fit", str(tiny_root), "--out", str(out), "--epochs", "1", "--learning-rate", "50", "--quiet"]
    argv += ["--val-fraction", "0.2"]  # enough calibration clips that training, not the split, is what fails
    _fails_cleanly(capsys, argv, "training diverged in epoch 1")
    assert not out.exists()


def test_learning_rate_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tone(tmp_path / "normal_id_00_00000000.wav", seconds=1.0)
    argv = ["fit", str(tmp_path), "--out", str(tmp_path / "m"), "--learning-rate", "0"]
    _fails_cleanly(capsys, argv, "learning-rate must be a positive number")


def test_option_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["fit", "x", "--out", "y", "--channel", "left"],
        ["fit", "x", "--out", "y", "--false-alarm-rate", "2"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "channel must be" in capsys.readouterr().err


def test_evaluate_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails_cleanly(capsys, ["evaluate", str(tmp_path / "model"), str(tmp_path)], "does not exist")


def test_synth_writes_the_dcase_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "synth",
        str(tmp_path),
        "--ids",
        "00,02",
        "--train",
        "2",
        "--test-normal",
        "1",
        "--test-anomaly",
        "1",
    ]
    assert main([*argv, "--duration", "1.0", "--seed", "5", "--snr-db", "3"]) == 0
    root = tmp_path / "slider"
    assert sorted(p.name for p in (root / "train").iterdir()) == [
        "normal_id_00_00000000.wav",
        "normal_id_00_00000001.wav",
        "normal_id_02_00000000.wav",
        "normal_id_02_00000001.wav",
    ]
    assert (root / "test" / "anomaly_id_02_00000000.wav").is_file()
    assert (root / "test" / "anomaly_kinds.csv").is_file()
    assert "wrote 4 train" in capsys.readouterr().out

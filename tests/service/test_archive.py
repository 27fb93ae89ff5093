"""`asd-score`: an archive scored by a process pool, in shards that add up to all of it, resumable."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from service.archive import Shard, find_audio, main
from service.detector import Detector
from tests.service.conftest import DEFAULT_MODEL
from tests.service.sounds import encode, noise


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    for day in ("2026-01-01", "2026-01-02"):
        folder = root / day
        folder.mkdir(parents=True)
        for i in range(5):
            (folder / f"normal_id_0{2 * (i % 2)}_{i:08d}.wav").write_bytes(encode(noise(1.5, seed=i)))
    (root / "2026-01-02" / "broken_id_00.wav").write_bytes(b"not audio")
    (root / "notes.txt").write_text("not picked up", encoding="utf-8")
    return root


def args(models_dir: Path, archive: Path, out: Path, *extra: str) -> list[str]:
    return [str(models_dir / DEFAULT_MODEL), str(archive), "--out", str(out), *extra]


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_scores_every_file_as_the_detector_does(models_dir: Path, archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    model = models_dir / DEFAULT_MODEL
    assert main([str(model), str(archive), "--out", str(out), "--jobs", "2", "--quiet"]) == 0
    got = {r["path"]: r for r in rows(out)}
    assert sorted(got) == [p.as_posix() for p in find_audio(archive)] and len(got) == 11
    assert got["2026-01-02/broken_id_00.wav"]["error"].startswith("undecodable_audio")
    detector = Detector(model)
    for rel in ("2026-01-01/normal_id_00_00000000.wav", "2026-01-01/normal_id_02_00000001.wav"):
        row = got[rel]
        machine_id = row["machine_id"]
        expected = detector.score_file(archive / rel, machine_id=machine_id).score
        assert float(row["score"]) == pytest.approx(expected, rel=1e-5)
        threshold = detector.bundle.threshold.for_id(machine_id).value
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-5)
        assert row["decision"] == ("anomalous" if expected > threshold else "normal")


def test_shards_are_disjoint_and_add_up_to_the_archive(
    models_dir: Path, archive: Path, tmp_path: Path
) -> None:
    seen: list[str] = []
    for index in range(3):
        out = tmp_path / f"shard{index}.csv"
        assert main(args(models_dir, archive, out, "--jobs", "1", "--shard", f"{index}/3", "--quiet")) == 0
        seen += [r["path"] for r in rows(out)]
    assert sorted(seen) == [p.as_posix() for p in find_audio(archive)]


def test_a_stopped_run_resumes_without_repeating_a_file(
    models_dir: Path, archive: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    model = str(models_dir / DEFAULT_MODEL)
    assert main([model, str(archive), "--out", str(out), "--jobs", "1", "--quiet"]) == 0
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    # A stop after four rows, the fifth cut in the middle of its line.
    out.write_text("".join(lines[:5]) + lines[5][:10], encoding="utf-8")
    assert main([model, str(archive), "--out", str(out), "--jobs", "2", "--quiet"]) == 0
    paths = [r["path"] for r in rows(out)]
    assert len(paths) == len(set(paths)) == 11


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/2"], "0 <= I < N"),
        (["--shard", "two"], "I/N"),
        (["--jobs", "0"], "--jobs"),
        (["--channel", "left"], "--channel"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    models_dir: Path, archive: Path, tmp_path: Path, args, message
) -> None:
    command = [sys.executable, "-m", "service.archive", str(models_dir / DEFAULT_MODEL), str(archive)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "o.csv"), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.csv").exists()


def test_a_broken_model_folder_is_refused_before_any_work(archive: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty-model").mkdir()
    assert main([str(tmp_path / "empty-model"), str(archive), "--out", str(tmp_path / "o.csv")]) == 1
    assert "asd-score: error:" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_shard_parsing() -> None:
    assert Shard.parse("1/4") == Shard(1, 4)
    assert Shard(1, 4).take([Path(str(i)) for i in range(10)]) == [Path("1"), Path("5"), Path("9")]
    for bad in ("4/4", "0/0", "-1/2", "1-2"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)


def test_asd_train_score_is_the_same_command(models_dir: Path, archive: Path, tmp_path: Path) -> None:
    from training.cli import main as asd_train

    out = tmp_path / "scores.csv"
    assert asd_train(["score", *args(models_dir, archive, out, "--jobs", "1", "--quiet")]) == 0
    assert len(rows(out)) == 11
    with pytest.raises(SystemExit) as stop:
        asd_train(["score", *args(models_dir, archive, out, "--shard", "2/2")])
    assert stop.value.code == 2

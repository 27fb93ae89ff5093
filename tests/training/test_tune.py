"""`asd-train tune`: the split, the trial loop and its failures, the JSON and the best `fit` command.

Most tests replace the trial's fit with a constant-factor detector (tests/training/tiny_detector.py),
so the loop runs in a second without TensorFlow; one tiny real search runs two fits.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import training.tune as tune
from training.cli import build_parser, main
from training.dataset import ClipFile
from training.errors import DatasetError
from training.fit_options import DEFAULT_FUSION
from training.synth import generate_dataset
from training.tune import SearchSpace, TuneOptions, fit_command, needed_per_id, split_held_out, trial_options

from .tiny_detector import make_detector

GARBAGE = "normal_id_00_99999999.wav"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Slider IDs 00 and 02, 11 normal 2-s clips each, and one file that is not audio."""
    data = tmp_path_factory.mktemp("tune-data")
    generate_dataset(
        data, ids=("00", "02"), n_train=11, n_test_normal=0, n_test_anomaly=0, seed=1, duration=2.0
    )
    (data / "slider" / "train" / GARBAGE).write_bytes(b"RIFF not a wav at all" * 10)
    return data


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _fake_fit(seen: list[set[str]], fail: Callable[[int], bool] = lambda n: False) -> Callable[..., None]:
    """A stand-in for `run_fit`: records the clips it was given and writes a detector that needs no training."""

    def fit(train_root: Path, out: Path, options: Any, **_: Any) -> None:
        seen.append({p.name for p in train_root.iterdir()})
        if fail(len(seen) - 1):
            raise RuntimeError("loss went to NaN\nsecond line")
        make_detector(out, factor=0.5)

    return fit


def _files(counts: dict[str, int]) -> list[ClipFile]:
    return [
        ClipFile(path=Path(f"normal_id_{mid}_{i:08d}.wav"), machine_id=mid, label="normal")
        for mid, n in counts.items()
        for i in range(n)
    ]


def test_split_holds_out_whole_clips_per_id_reproducibly() -> None:
    files = _files({"00": 40, "02": 12})
    train, held = split_held_out(files, TuneOptions(seed=4))
    assert {f.path for f in train}.isdisjoint({f.path for f in held})
    assert len(train) + len(held) == len(files)
    # 20 % of 40; at least 5 of 12.
    assert sum(f.machine_id == "00" for f in held) == 8 and sum(f.machine_id == "02" for f in held) == 5
    assert split_held_out(files, TuneOptions(seed=4)) == (train, held)
    assert split_held_out(files, TuneOptions(seed=5))[1] != held


def test_too_few_clips_per_id_says_how_many() -> None:
    options = TuneOptions(val_fraction=0.25)
    need = needed_per_id(2, options)
    split_held_out(_files({"00": need, "02": need}), options)  # enough
    with pytest.raises(
        DatasetError, match=rf"\(found 00: {need - 1}, 02: {need - 1}\): it needs at least {need} per ID"
    ):
        split_held_out(_files({"00": need - 1, "02": need - 1}), options)


def test_default_trial_is_fits_defaults_and_moves_into_a_narrow_space() -> None:
    assert SearchSpace().defaults() == {
        "frames": 8,
        "epochs": 8,
        "learning_rate": 1e-3,
        "filters": "16,32,64",
        "bottleneck": 16,
        "pooling": "mean",
        "scorer": "cae+envelope",
        "fusion": "mean",
    }
    narrow = SearchSpace(frames=(16,), epochs=(2, 2)).defaults()
    assert narrow["frames"] == 16 and narrow["epochs"] == 2


def test_best_command_parses_as_fit_with_the_trials_options(tmp_path: Path) -> None:
    params = {
        "frames": 16,
        "epochs": 5,
        "learning_rate": 0.00123,
        "filters": "8,16,32",
        "bottleneck": 32,
        "pooling": "gwrp",
        "scorer": "cae",
        "fusion": "max",  # ignored without a second scorer
    }
    options = TuneOptions(ids=("00", "02"), seed=3, channel=1)
    argv = fit_command(params, options, data_root=tmp_path / "my data", out=tmp_path / "m")
    args = build_parser().parse_args(shlex.split(shlex.join(argv))[1:])
    trial = trial_options(params, options)
    assert args.fusion is None and trial.resolved().fusion == DEFAULT_FUSION
    fused = {**params, "scorer": "cae+envelope"}
    fused_args = build_parser().parse_args(fit_command(fused, options, data_root=tmp_path, out=tmp_path)[1:])
    assert fused_args.fusion == "max" == trial_options(fused, options).fusion
    assert args.command == "fit" and args.data_root == tmp_path / "my data" and args.out == tmp_path / "m"
    assert (args.frames, args.patch_hop, args.epochs) == (trial.frames, trial.patch_hop, trial.epochs)
    assert args.learning_rate == trial.learning_rate and args.seed == trial.seed and args.channel == 1
    assert tuple(int(f) for f in args.filters.split(",")) == trial.cae.filters
    assert (args.bottleneck, args.pooling, args.scorer) == (trial.cae.bottleneck, trial.pooling, trial.scorer)
    assert args.ids == ("00", "02") and args.calibration == "auto"  # the final fit calibrates as fit does


def test_search_with_a_failing_trial_goes_on(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[set[str]] = []
    monkeypatch.setattr(tune, "run_fit", _fake_fit(seen, fail=lambda n: n == 1))
    out = tmp_path / "t.json"
    code, stdout, _ = _run(
        ["tune", str(root), "--trials", "3", "--val-fraction", "0.25", "--out", str(out)], capsys
    )
    assert code == 0
    report = json.loads(out.read_text())
    states = [t["state"] for t in report["trials"]]
    assert states == ["complete", "failed", "complete"]
    assert report["trials"][1]["error"] == "RuntimeError: loss went to NaN"
    assert "trial 1 failed: RuntimeError: loss went to NaN" in stdout
    # Held-out clips were never given to a fit; the unreadable file was left out, named and counted.
    held = set(report["held_out_files"])
    assert len(held) == 10 and all(names.isdisjoint(held) for names in seen)
    assert all(len(names) == 12 for names in seen)
    assert report["skipped"] == [{"file": GARBAGE, "reason": report["skipped"][0]["reason"]}]
    assert "skipped 1 unreadable" in stdout
    # The best is the completed trial with the highest AUC, and its per-ID and per-kind figures are there.
    done = [t for t in report["trials"] if t["state"] == "complete"]
    assert report["best"] == max(done, key=lambda t: t["auc"])
    assert set(report["best"]["per_id"]) == {"00", "02"}
    assert set(report["best"]["per_kind"]) == {"clicks", "tone", "band-noise", "gain", "speed"}
    assert stdout.count(report["best_fit_command"]) == 1


def test_every_trial_failing_is_a_clear_error(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tune, "run_fit", _fake_fit([], fail=lambda n: True))
    out = tmp_path / "t.json"
    code, _, err = _run(
        ["tune", str(root), "--trials", "2", "--val-fraction", "0.25", "--out", str(out)], capsys
    )
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("asd-train tune: error: all 2 trial(s) failed")
    assert "RuntimeError: loss went to NaN" in err
    report = json.loads(out.read_text())
    assert report["best"] is None and [t["state"] for t in report["trials"]] == ["failed", "failed"]


def test_timeout_stops_starting_trials_after_the_first(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tune, "run_fit", _fake_fit([]))
    out = tmp_path / "t.json"
    argv = ["tune", str(root), "--trials", "5", "--timeout", "0", "--val-fraction", "0.25", "--out", str(out)]
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and "--timeout 0 s reached after 1 trial(s)" in stdout
    assert len(json.loads(out.read_text())["trials"]) == 1


@pytest.mark.parametrize(
    ("make", "argv", "message"),
    [
        (lambda p: None, [], "does not exist"),
        (lambda p: (p / "slider" / "train").mkdir(parents=True), [], "no WAV files"),
        (
            lambda p: generate_dataset(
                p, ids=("00",), n_train=8, n_test_normal=0, n_test_anomaly=0, duration=1.0
            ),
            [],
            "it needs at least 32 per ID",
        ),
        (lambda p: p.mkdir(), ["--frames", "12"], "frames (12) must be divisible"),
    ],
    ids=["missing folder", "empty folder", "too few clips", "bad frames"],
)
def test_bad_input_fails_cleanly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], object],
    argv: list[str],
    message: str,
) -> None:
    data = tmp_path / "data"
    make(data)
    code, _, err = _run(["tune", str(data), "--out", str(tmp_path / "t.json"), *argv], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("asd-train tune: error: ") and message in err
    assert not (tmp_path / "t.json").exists()


def test_tiny_real_search(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real trials of 2 epochs: a JSON whose best is one of its trials, a command `fit` parses."""
    out = tmp_path / "tune.json"
    argv = ["tune", str(root), "--trials", "2", "--epochs", "2", "--frames", "8,16", "--val-fraction", "0.25"]
    code, stdout, _ = _run([*argv, "--out", str(out)], capsys)
    assert code == 0, stdout
    report = json.loads(out.read_text())
    assert [t["state"] for t in report["trials"]] == ["complete", "complete"]
    assert report["best"] in report["trials"]
    assert report["best"]["auc"] == max(t["auc"] for t in report["trials"])
    for trial in report["trials"]:
        assert 0.0 <= trial["auc"] <= 1.0 and 0.0 <= trial["pauc"] <= 1.0
        assert trial["params"]["epochs"] == 2 and trial["params"]["frames"] in (8, 16)
    args = build_parser().parse_args(shlex.split(report["best_fit_command"])[1:])
    best = report["best"]["params"]
    assert args.command == "fit" and args.frames == best["frames"] and args.epochs == 2
    assert args.pooling == best["pooling"] and args.scorer == best["scorer"] and args.data_root == root

"""`asd-train calibrate` / `training.calibrate.recalibrate`: site thresholds without retraining.

The detector is `tiny_detector`'s constant-factor graph, whose score grows
with loudness, so a site whose normal clips are louder must get a higher
threshold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.bundle import Bundle, sha256_of
from service.detector import Detector
from training.calibrate import MIN_CLIPS, format_summary, recalibrate
from training.cli import main
from training.errors import CalibrationError
from training.export import score_paths
from training.threshold import calibrate

from .tiny_detector import SAMPLE_RATE, make_detector

ROOT = Path(__file__).resolve().parents[2]


def noise(seed: int, *, gain: float = 1.0, rate: int = SAMPLE_RATE, seconds: float = 2.0) -> np.ndarray:
    # tiny_detector.clip's normal sound, at any sample rate.
    rng = np.random.default_rng(seed)
    return (gain * 0.02 * rng.standard_normal(int(seconds * rate))).astype(np.float32)


def write_normals(
    folder: Path,
    n: int,
    *,
    machine_id: str = "00",
    gain: float = 1.0,
    rate: int = SAMPLE_RATE,
    start: int = 0,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"normal_id_{machine_id}_{i:08d}.wav"
        sf.write(path, noise(1000 * int(machine_id) + i, gain=gain, rate=rate), rate)
        paths.append(path)
    return paths


@pytest.fixture
def model(tmp_path: Path) -> Path:
    folder = make_detector(tmp_path / "model", machine_ids=("00", "02", "06"))
    (folder / "training_curves.png").write_bytes(b"\x89PNG not really")
    return folder


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_writes_a_loadable_detector_with_the_site_threshold(model: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    paths = write_normals(site, 12, machine_id="00") + write_normals(site, 12, machine_id="02")
    out = tmp_path / "site-model"
    old = Bundle.read(model)
    before = datetime.now(UTC)

    result = recalibrate(model, site, out, command="asd-train calibrate x y --out z")

    detector = Detector(out)  # hash, schema, graph as the service checks them
    assert (out / "model.onnx").read_bytes() == (model / "model.onnx").read_bytes()
    assert detector.bundle.model.sha256 == sha256_of(out / "model.onnx") == old.model.sha256
    assert (out / "training_curves.png").read_bytes() == (model / "training_curves.png").read_bytes()
    new = detector.bundle
    assert new == result.bundle and new.name == "site-model"
    # Only the threshold changed.
    for name in ("features", "normalization", "patching", "model", "training", "machine_ids", "fingerprint"):
        assert getattr(new, name) == getattr(old, name), name

    # The threshold is the deployed path's scores fitted at the model's quantile.
    expected = calibrate(score_paths(Detector(model), paths), quantile=old.threshold.quantile)
    threshold = new.threshold
    assert threshold.value == pytest.approx(expected.value)
    assert threshold.value != old.threshold.value
    assert threshold.scores_from == "site" and threshold.quantile == old.threshold.quantile
    assert threshold.n_calibration_clips == 24 and threshold.curve is not None
    assert sorted(threshold.per_id or {}) == ["00", "02"]

    [event] = threshold.calibration_history
    assert before <= event.at <= datetime.now(UTC) + timedelta(seconds=1)
    assert event.at.utcoffset() == timedelta(0)
    assert event.source == str(site.resolve())
    assert (event.n_clips, event.clips_per_id) == (24, {"00": 12, "02": 12})
    assert event.false_alarm_rate == pytest.approx(0.1) and event.machine_id is None
    assert (event.old_value, event.new_value) == (old.threshold.value, threshold.value)
    assert event.per_id == {mid: (None, threshold.per_id[mid].value) for mid in ("00", "02")}
    assert event.command == "asd-train calibrate x y --out z"


def test_louder_site_raises_the_threshold_and_history_accumulates(model: Path, tmp_path: Path) -> None:
    write_normals(tmp_path / "quiet", 15)
    write_normals(tmp_path / "loud", 15, gain=3.0)
    quiet = recalibrate(model, tmp_path / "quiet", tmp_path / "a").bundle.threshold
    loud = recalibrate(tmp_path / "a", tmp_path / "loud", tmp_path / "b").bundle.threshold
    assert loud.value > quiet.value
    assert loud.per_id["00"].value > quiet.per_id["00"].value
    first, second = loud.calibration_history
    assert first == quiet.calibration_history[0]
    assert second.old_value == quiet.value and second.new_value == loud.value
    assert second.per_id == {"00": (quiet.per_id["00"].value, loud.per_id["00"].value)}


def test_false_alarm_rate_sets_the_quantile(model: Path, tmp_path: Path) -> None:
    paths = write_normals(tmp_path / "site", 20)
    result = recalibrate(model, tmp_path / "site", tmp_path / "out", false_alarm_rate=0.05)
    expected = calibrate(score_paths(Detector(model), paths), quantile=0.95)
    assert result.bundle.threshold.quantile == pytest.approx(0.95)
    assert result.bundle.threshold.value == pytest.approx(expected.value)
    assert result.event.false_alarm_rate == 0.05


def test_machine_id_replaces_only_that_ids_threshold(model: Path, tmp_path: Path) -> None:
    # Names say 00; --machine-id says whose recordings they are.
    write_normals(tmp_path / "site", 12, machine_id="00")
    old = Bundle.read(model).threshold
    first = recalibrate(model, tmp_path / "site", tmp_path / "a", machine_id="6", false_alarm_rate=0.05)
    threshold = first.bundle.threshold
    assert list(threshold.per_id or {}) == ["06"]
    assert threshold.per_id["06"].quantile == pytest.approx(0.95)
    unchanged = threshold.model_dump(exclude={"per_id", "calibration_history"})
    assert unchanged == old.model_dump(exclude={"per_id", "calibration_history"})
    event = first.event
    assert (event.machine_id, event.clips_per_id, event.n_clips) == ("06", {"06": 12}, 12)
    assert event.old_value == event.new_value == old.value
    assert event.per_id == {"06": (None, threshold.per_id["06"].value)}

    # Again on louder clips: the ID's own earlier threshold is the old one, its target is kept.
    write_normals(tmp_path / "loud", 12, gain=3.0)
    second = recalibrate(tmp_path / "a", tmp_path / "loud", tmp_path / "b", machine_id="id_06")
    again = second.bundle.threshold
    assert again.per_id["06"].quantile == pytest.approx(0.95)
    assert again.per_id["06"].value > threshold.per_id["06"].value
    assert second.event.per_id == {"06": (threshold.per_id["06"].value, again.per_id["06"].value)}
    assert again.value == old.value and again.scores_from == old.scores_from


def test_ids_from_file_names_each_get_their_own_fit(model: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    write_normals(site, 12, machine_id="00")
    write_normals(site, 12, machine_id="02", gain=3.0)
    write_normals(site, 4, machine_id="06")
    result = recalibrate(model, site, tmp_path / "out")
    threshold = result.bundle.threshold
    assert sorted(threshold.per_id or {}) == ["00", "02"]  # 06 has too few of its own
    assert threshold.per_id["02"].value > threshold.per_id["00"].value
    assert threshold.per_id["00"].n_calibration_clips == 12
    assert threshold.n_calibration_clips == 28  # the model-wide fit takes every clip
    assert result.clips_per_id == {"00": 12, "02": 12, "06": 4} and result.too_few == {"06": 4}
    assert "ID 06: 4 clips, fewer than 10" in format_summary(result)


def test_plain_names_are_id_00(tmp_path: Path) -> None:
    model = make_detector(tmp_path / "model", machine_ids=("00",))
    site = tmp_path / "site"
    site.mkdir()
    for i in range(MIN_CLIPS):
        sf.write(site / f"pump-{i}.wav", noise(i), SAMPLE_RATE)
    result = recalibrate(model, site, tmp_path / "out")
    assert result.clips_per_id == {"00": MIN_CLIPS}


def test_dcase_layout_reads_the_train_folder(model: Path, tmp_path: Path) -> None:
    write_normals(tmp_path / "site" / "slider" / "train", 11)
    write_normals(tmp_path / "site" / "slider" / "test", 3, machine_id="02")
    result = recalibrate(model, tmp_path / "site", tmp_path / "out")
    assert result.event.source == str((tmp_path / "site" / "slider" / "train").resolve())
    assert result.clips_per_id == {"00": 11}


def test_cli_reports_resampled_skipped_and_anomalous_files(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "site"
    write_normals(site, 10)
    write_normals(site, 3, rate=44100, start=10)
    write_normals(site, 2, rate=8000, start=20)
    (site / "normal_id_00_00000099.wav").write_bytes(b"RIFF not a wav file" * 10)
    sf.write(site / "normal_id_00_00000098.wav", noise(98, seconds=0.2), SAMPLE_RATE)  # shorter than a patch
    sf.write(site / "anomaly_id_00_00000000.wav", noise(7, gain=20.0), SAMPLE_RATE)
    out = tmp_path / "out"
    argv = ["calibrate", str(model), str(site), "--out", str(out), "--false-alarm-rate", "0.2", "--quiet"]

    assert main(argv) == 0

    printed = capsys.readouterr().out
    assert "3 clips at 44100 Hz were resampled to 16000 Hz" in printed
    assert "2 clips at 8000 Hz were resampled to 16000 Hz" in printed
    assert "skipped 2 files" in printed
    assert "normal_id_00_00000099.wav: cannot decode" in printed
    assert "normal_id_00_00000098.wav: audio is 0.200 s long" in printed
    assert "ignored 1 anomaly_* file: not normal recordings" in printed
    threshold = Detector(out).bundle.threshold
    event = threshold.calibration_history[-1]
    assert event.n_clips == 15 and event.false_alarm_rate == 0.2
    assert event.command == "asd-train " + " ".join(argv)
    # Old -> new value, false alarms of both on these clips, the interval, the clips still needed.
    lo, hi = threshold.false_alarm_interval
    more = threshold.clips_for_3_points - 15
    assert f"model-wide threshold (15 clips): 100 -> {threshold.value:.6g}" in printed
    assert "false alarms on these clips: 0.0 % with the old threshold, " in printed
    assert f"{100 * threshold.empirical_false_alarm_rate:.1f} % with the new" in printed
    assert f"on new normal clips: {100 * lo:.1f} % to {100 * hi:.1f} % (90 % interval)" in printed
    assert f"{more} more clips would reach +/- 3 points" in printed


def test_old_false_alarm_rate_is_measured_on_the_site_clips(model: Path, tmp_path: Path) -> None:
    paths = write_normals(tmp_path / "site", 12)
    scores = score_paths(Detector(model), paths)
    cut = float(np.sort(scores)[8])  # 3 of 12 clips above it
    bundle = Bundle.read(model)
    bundle.model_copy(update={"threshold": bundle.threshold.model_copy(update={"value": cut})}).write(model)
    result = recalibrate(model, tmp_path / "site", tmp_path / "out")
    wide = result.refits[0]
    assert wide.machine_id is None and wide.old_value == cut
    assert wide.old_false_alarm_rate == pytest.approx(3 / 12)
    assert "false alarms on these clips: 25.0 % with the old threshold" in format_summary(result)


def test_out_may_be_the_model_folder(model: Path, tmp_path: Path) -> None:
    write_normals(tmp_path / "site", 12)
    old_value = Bundle.read(model).threshold.value
    onnx = (model / "model.onnx").read_bytes()
    recalibrate(model, tmp_path / "site", model)
    threshold = Detector(model).bundle.threshold
    assert threshold.value != old_value and len(threshold.calibration_history) == 1
    assert (model / "model.onnx").read_bytes() == onnx and (model / "training_curves.png").is_file()
    assert _leftovers(tmp_path) == []


def test_an_existing_detector_folder_is_replaced(model: Path, tmp_path: Path) -> None:
    write_normals(tmp_path / "site", 12)
    out = make_detector(tmp_path / "out", threshold=5.0)
    (out / "stale.txt").write_text("from the earlier model")
    recalibrate(model, tmp_path / "site", out)
    assert not (out / "stale.txt").exists() and (out / "training_curves.png").is_file()
    assert len(Detector(out).bundle.threshold.calibration_history) == 1


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main([*argv, "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("asd-train calibrate: error: ") and message in lines[0], lines[0]
    assert captured.out == ""


def _junk(site: Path, n: int) -> None:
    site.mkdir()
    for i in range(n):
        (site / f"normal_id_00_{i:08d}.wav").write_bytes(b"RIFF not a wav file" * 10)


def _only_anomalies(site: Path) -> None:
    site.mkdir()
    for i in range(12):
        sf.write(site / f"anomaly_id_00_{i:08d}.wav", noise(i), SAMPLE_RATE)


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        (lambda site: write_normals(site, MIN_CLIPS - 1), [], "9 usable normal clip(s) for the model-wide"),
        (lambda site: write_normals(site, MIN_CLIPS - 1), ["--machine-id", "2"], "for machine ID 02"),
        (lambda site: site.mkdir(), [], "no WAV files in"),
        (
            lambda site: write_normals(site, 12),
            ["--machine-id", "4"],
            "not one of this model's IDs (00, 02, 06)",
        ),
        (lambda site: write_normals(site, 12), ["--machine-id", "x"], "machine IDs are numbers"),
        (lambda site: write_normals(site, 12, machine_id="03"), [], "machine ID(s) 03"),
        (lambda site: None, [], "does not exist"),
        (lambda site: _junk(site, 12), [], "none of the 12 normal clips"),
        (_only_anomalies, [], "holds only anomaly_* files"),
        (lambda site: write_normals(site, 12), ["--channel", "1"], "none of the 12 normal clips"),
    ],
)
def test_refusals_write_nothing(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setup, extra: list[str], message: str
) -> None:
    site = tmp_path / "site"
    setup(site)
    out = tmp_path / "out"
    _fails(capsys, ["calibrate", str(model), str(site), "--out", str(out), *extra], message)
    assert not out.exists() and _leftovers(tmp_path) == []

    # An existing detector at --out stays as it was.
    make_detector(out, threshold=7.0)
    before = (out / "threshold.json").read_bytes()
    _fails(capsys, ["calibrate", str(model), str(site), "--out", str(out), *extra], message)
    assert (out / "threshold.json").read_bytes() == before and _leftovers(tmp_path) == []


def test_missing_model_and_foreign_out_are_refused(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_normals(tmp_path / "site", 12)
    site = str(tmp_path / "site")
    missing = str(tmp_path / "nope")
    _fails(capsys, ["calibrate", missing, site, "--out", str(tmp_path / "o")], "no threshold.json")
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    _fails(capsys, ["calibrate", str(model), site, "--out", str(foreign)], "holds no model")
    assert [p.name for p in foreign.iterdir()] == ["thesis.txt"]
    _fails(capsys, ["calibrate", str(model), site, "--out", str(model / "inner")], "inside the model folder")


def test_a_failure_while_writing_leaves_nothing(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.calibrate as module

    write_normals(tmp_path / "site", 12)
    out = make_detector(tmp_path / "out", threshold=7.0)
    before = (out / "threshold.json").read_bytes()

    def broken(work: Path, target: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(module, "replace_folder", broken)
    with pytest.raises(OSError, match="disk full"):
        recalibrate(model, tmp_path / "site", out)
    assert (out / "threshold.json").read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_unreadable_false_alarm_rate_is_refused(model: Path, tmp_path: Path) -> None:
    write_normals(tmp_path / "site", 12)
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        recalibrate(model, tmp_path / "site", tmp_path / "out", false_alarm_rate=1.5)
    assert not (tmp_path / "out").exists()


def test_calibrate_never_imports_tensorflow(model: Path, tmp_path: Path) -> None:
    write_normals(tmp_path / "site", 12)
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from training.cli import main\n"
        f"status = main(['calibrate', {str(model)!r}, {str(tmp_path / 'site')!r}, '--out', {str(out)!r}, "
        "'--quiet'])\n"
        "print(status, sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []"
    assert json.loads((out / "threshold.json").read_text())["threshold"]["scores_from"] == "site"


def test_a_fused_model_refits_each_threshold_on_the_scores_the_service_compares_with_it(
    tmp_path: Path,
) -> None:
    """ID 02 has its own envelope entry: its threshold must come from its clips scored with it,
    the model-wide threshold from the clips scored without an ID (as requests without one are)."""
    from .tiny_detector import clip, two_id_fused_scoring

    probe = Detector(make_detector(tmp_path / "probe")).score(clip(seed=0, anomalous=False))
    assert probe.band_db is not None
    model = make_detector(tmp_path / "model", scoring=two_id_fused_scoring(probe.score, probe.band_db))
    site = tmp_path / "site"
    paths = write_normals(site, 12, machine_id="00") + write_normals(site, 12, machine_id="02")
    ids = ["00"] * 12 + ["02"] * 12
    detector = Detector(model)
    own = score_paths(detector, paths, machine_ids=ids)
    wide = score_paths(detector, paths)
    mine = np.asarray(ids) == "02"
    assert not np.allclose(own[mine], wide[mine])  # the ID's entry changes its clips' scores

    threshold = recalibrate(model, site, tmp_path / "out").bundle.threshold

    assert threshold.value == pytest.approx(calibrate(wide, quantile=0.9).value, rel=1e-9)
    assert threshold.per_id is not None
    assert threshold.per_id["02"].value == pytest.approx(calibrate(own[mine], quantile=0.9).value, rel=1e-9)
    assert threshold.per_id["00"].value == pytest.approx(calibrate(own[~mine], quantile=0.9).value, rel=1e-9)

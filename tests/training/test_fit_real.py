"""A first recording session of a real machine is enough to fit and calibrate a detector.

Sixteen 5-s pieces of one real MIMII slide rail (8 microphones x 2 halves of one clip) stand in
for the 10-20 clips a site records first. `asd-train fit` with the README's defaults must cross-fit
them, set ID 00's own threshold from all 16 out-of-fold scores and say how precise it is.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.audio import read_audio
from service.bundle import Bundle
from service.detector import Detector
from tests.conftest import real_recordings_dir
from training.cli import main
from training.export import score_paths


def _pieces(source: Path, folder: Path, *, channels: range) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for channel in channels:
        samples = read_audio(source, sample_rate=16000, channel=channel).samples
        half = samples.size // 2
        for k, piece in enumerate((samples[:half], samples[half:])):
            sf.write(folder / f"normal_id_00_{2 * channel + k:08d}.wav", piece, 16000, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def slider_normal() -> Path:
    source = real_recordings_dir() / "mimii-8ch" / "slider_normal.wav"
    if not source.is_file():
        pytest.skip(f"real recordings not found at {source.parent}")
    return source


@pytest.fixture(scope="module")
def fitted(slider_normal: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    clips = _pieces(slider_normal, tmp_path_factory.mktemp("site") / "train", channels=range(8))
    out = tmp_path_factory.mktemp("models") / "site"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["fit", str(clips), "--out", str(out), "--seed", "0", "--quiet"])
    assert code == 0, stdout.getvalue()
    return clips, out, stdout.getvalue()


def test_sixteen_real_clips_fit_and_calibrate_a_per_id_threshold(fitted) -> None:
    clips, out, printed = fitted
    bundle = Bundle.read(out)
    threshold = bundle.threshold
    assert threshold.scores_from == "cross_fit" and threshold.folds == 5
    fit = threshold.for_id("00")
    assert threshold.per_id is not None and "00" in threshold.per_id
    assert fit.n_calibration_clips == 16, "every clip calibrates, out of fold"
    lo, hi = fit.false_alarm_interval
    # 16 clips give an honest, wide interval around the target and ask for more clips.
    assert lo < 0.1 < hi and hi - lo > 0.1
    assert fit.clips_for_3_points is not None and fit.clips_for_3_points > 16
    assert str(fit.clips_for_3_points) in printed and "cross" in printed.lower()

    # The exported detector scores the site's own clips; its threshold is in their range, not far
    # above or below all of them (a threshold fitted to these very scores' neighbours).
    detector = Detector(out)
    scores = score_paths(detector, sorted(clips.glob("*.wav")))
    assert np.all(np.isfinite(scores))
    assert scores.min() < fit.value < 3 * scores.max()


def test_nine_real_clips_are_refused_plainly(slider_normal: Path, tmp_path: Path, capsys) -> None:
    clips = _pieces(slider_normal, tmp_path / "few", channels=range(5))
    (clips / "normal_id_00_00000009.wav").unlink()
    assert len(list(clips.glob("*.wav"))) == 9
    code = main(["fit", str(clips), "--out", str(tmp_path / "m"), "--quiet"])
    captured = capsys.readouterr()
    assert code != 0
    assert "10" in captured.err and "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "m" / "threshold.json").exists()

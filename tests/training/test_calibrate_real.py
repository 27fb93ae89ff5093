"""On-site recalibration on real recordings: a few minutes of a real machine set a per-ID threshold.

The shipped default model learned synthetic slide rails; against it, real MIMII
clips score far above the threshold. Sixteen 5-s pieces of a real slide rail
(8 microphones x 2 halves of one MIMII clip) are what a first recording session
gives; `recalibrate` must turn them into a threshold that flags about the
target share of them, and leave the model untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.audio import read_audio
from service.bundle import sha256_of
from service.detector import Detector
from tests.conftest import real_recordings_dir
from training.calibrate import recalibrate
from training.export import score_paths

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = real_recordings_dir() / "mimii-8ch" / "slider_normal.wav"
    if not source.is_file():
        pytest.skip(f"real recordings not found at {source.parent}")
    folder = tmp_path_factory.mktemp("site")
    for channel in range(8):
        samples = read_audio(source, sample_rate=16000, channel=channel).samples
        half = samples.size // 2
        for k, piece in enumerate((samples[:half], samples[half:])):
            sf.write(folder / f"normal_id_00_{2 * channel + k:08d}.wav", piece, 16000, subtype="PCM_16")
    return folder


def test_sixteen_real_clips_recalibrate_the_default_model(site_clips: Path, tmp_path: Path) -> None:
    model = REPO / "models" / "slider"
    before = Detector(model)
    paths = sorted(site_clips.glob("*.wav"))
    scores = score_paths(before, paths)
    # The synthetic model knows nothing of this rail: its own threshold flags nearly every piece.
    assert np.mean(scores > before.bundle.threshold.for_id("00").value) >= 0.9

    out = tmp_path / "slider-site"
    result = recalibrate(model, site_clips, out, machine_id="00")
    after = Detector(out)
    fit = after.bundle.threshold.per_id["00"]
    assert fit.n_calibration_clips == 16
    assert sha256_of(out / "model.onnx") == sha256_of(model / "model.onnx")
    # The model-wide threshold (for the synthetic IDs) is left as it was.
    assert after.bundle.threshold.value == before.bundle.threshold.value
    flagged = int(np.sum(score_paths(after, paths) > fit.value))
    assert 0 <= flagged <= 4, flagged  # target 10 % of 16
    assert result.event.n_clips == 16 and result.event.machine_id == "00"
    lo, hi = fit.false_alarm_interval
    assert lo < 0.1 < hi and fit.clips_for_3_points > 16  # 16 clips: an honest, wide interval

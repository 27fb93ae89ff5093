"""The peer (librosa + onnxruntime's default session) scores what ours scores, on the shipped model.

The peer computes the mean patch error of the model's exported graph (the
benchmark gives it the fp32 graph it trains; here it is whatever
models/slider holds, run by both sides alike); ours' CAE component is that
error (the shipped bundle pools by the mean and fuses the envelope scorer on
top). librosa's float64 log-mel and ours' float32 one differ by rounding
only: the scores agree to 1e-5 relative.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.detector import Clip, onnx_default_predict
from bench.inprocess import NaiveRecipe, Timings, agreement, measure_all, naive_score
from service.detector import Detector

MODELS = Path(__file__).resolve().parents[2] / "models"
RTOL = 1e-5


def _wav(*, seed: int, tone: float, seconds: float = 10.0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    y = 0.05 * rng.standard_normal(t.size) + tone * np.sin(2 * np.pi * 1000 * t)
    buffer = io.BytesIO()
    sf.write(buffer, y.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODELS / "slider")


def _peer(detector: Detector):
    return onnx_default_predict(
        detector.folder / detector.bundle.model.file, input_name=detector.bundle.model.input_name
    )


@pytest.mark.parametrize(("seed", "tone"), [(0, 0.0), (1, 0.3)])
def test_the_peer_scores_as_ours_cae_component(detector, seed, tone):
    assert detector.bundle.scoring is not None and detector.bundle.scoring.pooling == "mean"
    data = _wav(seed=seed, tone=tone)
    ours = detector.score_file(data)
    assert ours.components is not None
    timings = Timings()
    peer = naive_score(data, NaiveRecipe.from_detector(detector), _peer(detector), timings)
    assert peer == pytest.approx(ours.components["cae"], rel=RTOL)
    assert peer == pytest.approx(float(ours.patch_errors.mean()), rel=RTOL)
    assert all(len(timings.wall[stage]) == 1 for stage in ("decode", "features", "inference", "total"))


def test_measure_all_holds_the_peer_against_ours_cae_scores(detector):
    clips = [
        Clip(
            name=f"{seed}.wav", source="synthetic", data=_wav(seed=seed, tone=tone), seconds=10.0, channels=1
        )
        for seed, tone in ((2, 0.0), (3, 0.2))
    ]
    recipe = NaiveRecipe.from_detector(detector)
    peer = _peer(detector)
    measured = measure_all(detector, recipe, peer, clips, warmup=0, peer_predict=peer)
    assert measured.peer is not None and measured.peer.n_clips == 2
    # Fused scores are z-scores, not errors: the CAE component is what the peer is compared with.
    assert measured.ours.cae_scores == pytest.approx(measured.peer.scores, rel=RTOL)
    assert measured.ours.scores != pytest.approx(measured.peer.scores, rel=0.01)
    checks = agreement(measured, [detector.score_file(clip.data).score for clip in clips])
    assert checks["ours_vs_detector_max_rel_diff"] == 0.0
    assert checks["ours_vs_peer_max_rel_diff"] < RTOL and checks["ours_vs_naive_max_rel_diff"] < RTOL

import argparse

import numpy as np
import pytest
import soundfile as sf

from service.audio import read_audio
from service.detector import Detector
from service.features import FeatureParams
from service.patches import PatchLayout
from tests.training.tiny_detector import clip, make_detector, two_id_fused_scoring
from training.errors import ExploreError
from training.explore import (
    add_explore_arguments,
    explore,
    patches_to_spectrogram,
    reconstruct_clip,
    run_explore,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore-models")
    return {arch: Detector(make_detector(root / arch, arch=arch, factor=0.5)) for arch in ("cae", "dense")}


def _assert_png(path, *, min_kb: float = 20) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_kb * 1024


def test_patches_are_reassembled_by_overlap_averaging():
    rng = np.random.default_rng(0)
    spec = rng.standard_normal((8, 45)).astype(np.float32)
    layout = PatchLayout(frames=10, hop=4, arch="cae", params=FeatureParams(n_mels=8))
    cut, starts = layout.cut(spec)  # starts 0, 4, ..., 32: frames 42..44 uncovered
    again = patches_to_spectrogram(np.asarray(cut), starts, spec.shape[1])
    assert again.shape == spec.shape
    np.testing.assert_allclose(again[:, :42], spec[:, :42], rtol=1e-6)
    assert np.isnan(again[:, 42:]).all()

    # Overlapping patches of constant value v_k average to the mean of those covering a frame.
    constant = np.stack([np.full((8, 10), float(k)) for k in range(len(starts))])
    averaged = patches_to_spectrogram(constant, starts, spec.shape[1])
    assert averaged[0, 0] == 0.0  # only patch 0
    assert averaged[0, 9] == pytest.approx((0 + 1 + 2) / 3)  # patches 0, 1, 2 cover frame 9


@pytest.mark.parametrize("arch", ["cae", "dense"])
def test_reconstruction_matches_the_detector_score(detectors, arch):
    detector = detectors[arch]
    y = clip(seed=2, anomalous=True)
    recon = reconstruct_clip(detector, y)
    score = detector.score(y)
    np.testing.assert_allclose(recon.patch_errors, score.patch_errors, rtol=1e-5)
    np.testing.assert_allclose(recon.patch_start, score.patch_start)
    np.testing.assert_allclose(recon.patch_end, score.patch_end)
    assert recon.score == pytest.approx(score.score, rel=1e-5)
    np.testing.assert_allclose(recon.patch_scores, recon.patch_errors, rtol=1e-6)  # no fusion
    # Every patch has the same number of cells per mel bin, so the per-bin errors average to the score.
    assert recon.mel_errors.shape == (detector.params.n_mels,)
    assert recon.mel_errors.mean() == pytest.approx(score.score, rel=1e-4)
    # The graph halves its input: where patches cover the clip, the re-assembled output is spec / 2.
    covered = ~np.isnan(recon.reconstruction[0])
    # 2 s = 63 frames; patches start at frames 0 and 16 and are 32 wide, so frames 0..47 are covered.
    assert covered[:48].all() and not covered[48:].any()
    np.testing.assert_allclose(recon.reconstruction[:, covered], recon.spec[:, covered] / 2, rtol=1e-5)
    np.testing.assert_allclose(recon.squared_error[:, covered], (recon.spec[:, covered] / 2) ** 2, rtol=1e-4)


def test_explore_real_8_channel_recordings(real_recordings, tmp_path):
    normal = real_recordings / "mimii-8ch" / "slider_normal.wav"
    abnormal = real_recordings / "mimii-8ch" / "slider_abnormal.wav"
    assert sf.info(normal).channels == 8
    # The one test that draws the chromagram (librosa compiles numba code on first use).
    written = explore([normal, abnormal], tmp_path / "plain")
    assert written == [tmp_path / "plain" / "explore.png"]
    _assert_png(written[0])


def test_explore_with_a_model_draws_the_reconstruction(real_recordings, detectors, tmp_path):
    abnormal = real_recordings / "mimii-8ch" / "slider_abnormal.wav"
    written = explore(
        [abnormal], tmp_path / "model", model_dir=detectors["dense"].folder, channel=3, chroma=False
    )
    assert [p.name for p in written] == ["explore.png", "reconstruction.png"]
    for path in written:
        _assert_png(path)


def test_channel_choice_reaches_the_audio(real_recordings, detectors):
    path = real_recordings / "mimii-8ch" / "slider_normal.wav"
    first = read_audio(path, sample_rate=16000, channel=0).samples
    other = read_audio(path, sample_rate=16000, channel=5).samples
    assert not np.array_equal(first, other)
    scores = {ch: reconstruct_clip(detectors["cae"], y).score for ch, y in ((0, first), (5, other))}
    assert scores[0] != scores[5]


def test_errors_name_the_problem(tmp_path, detectors, real_recordings):
    with pytest.raises(ExploreError, match="no such file"):
        explore([tmp_path / "missing.wav"], tmp_path / "out", chroma=False)
    with pytest.raises(ExploreError, match="does not exist"):
        explore(
            [real_recordings / "mimii-8ch" / "slider_normal.wav"],
            tmp_path / "out",
            model_dir=tmp_path / "no-model",
            chroma=False,
        )
    with pytest.raises(ExploreError, match="channel 8 does not exist"):
        explore(
            [real_recordings / "mimii-8ch" / "slider_normal.wav"], tmp_path / "out", channel=8, chroma=False
        )
    short = tmp_path / "short.wav"
    sf.write(short, clip(seed=0, anomalous=False, seconds=0.5), 16000)
    with pytest.raises(ExploreError, match="the model needs at least"):
        explore([short], tmp_path / "out", model_dir=detectors["cae"].folder, chroma=False)
    with pytest.raises(ExploreError, match="no audio files"):
        explore([], tmp_path / "out")


def test_run_explore_exit_status(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="asd-train explore")
    add_explore_arguments(parser)
    args = parser.parse_args([str(tmp_path / "missing.wav"), "--out", str(tmp_path), "--no-chroma"])
    status = run_explore(args)
    assert status == 2
    assert "asd-train explore: error:" in capsys.readouterr().err

    good = tmp_path / "clip.wav"
    sf.write(good, clip(seed=0, anomalous=True), 16000)
    args = parser.parse_args([str(good), "--out", str(tmp_path / "figs"), "--no-chroma", "--channel", "0"])
    assert run_explore(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "figs" / "explore.png")


def test_a_fused_model_is_drawn_with_the_score_and_threshold_the_service_answers(tmp_path, monkeypatch):
    probe = Detector(make_detector(tmp_path / "probe")).score(clip(seed=0, anomalous=False))
    assert probe.band_db is not None
    scoring = two_id_fused_scoring(probe.score, probe.band_db)
    detector = Detector(make_detector(tmp_path / "fused", scoring=scoring, threshold=5.5, per_id={"02": 9.0}))
    y = clip(seed=3, anomalous=False)
    for machine_id, threshold in ((None, 5.5), ("02", 9.0)):
        recon = reconstruct_clip(detector, y, machine_id=machine_id)
        scored = detector.score(y, machine_id=machine_id)
        assert recon.score == pytest.approx(scored.score) and recon.threshold == threshold
        np.testing.assert_allclose(recon.patch_scores, scored.segment_values)
        # The errors stay the CAE's; the fused score is on another scale.
        np.testing.assert_allclose(recon.patch_errors, scored.patch_errors, rtol=1e-5)
        assert recon.score != pytest.approx(float(recon.patch_errors.mean()))
    assert reconstruct_clip(detector, y, machine_id="02").score != pytest.approx(
        reconstruct_clip(detector, y).score
    )

    # The command takes the ID from a DCASE file name when the model knows it, and draws the figure.
    import training.explore as module

    asked = []

    def recording(detector, samples, *, machine_id=None):
        asked.append(machine_id)
        return reconstruct_clip(detector, samples, machine_id=machine_id)

    monkeypatch.setattr(module, "reconstruct_clip", recording)
    paths = [tmp_path / name for name in ("normal_id_02_00000000.wav", "normal_id_04_00000000.wav", "a.wav")]
    for path in paths:
        sf.write(path, y, 16000)
    written = explore(paths, tmp_path / "out", model_dir=detector.folder, chroma=False)
    assert [p.name for p in written] == ["explore.png", "reconstruction.png"]
    assert asked == ["02", None, None]  # 04 is not one of the model's IDs (00, 02)
